"""The recipe (kiln/pipeline.py) and the one pass loop (kiln/passes/loop.py): every step of a
compilation, Kiln's graph passes and TVM's alike, runs through one loop whose instruments see it."""

import torch
import tvm

import kiln
from kiln import models
from kiln.backends import BuildContext, get_backend, resolve_target
from kiln.compiler import capture
from kiln.ir.graph import Graph
from kiln.passes import resolve_pipeline
from kiln.passes.instruments import Outputs, standard_instruments
from kiln.passes.loop import Instrument, run_steps
from kiln.passes.pruning import pruning_passes
from kiln.passes.quantization import quantization_passes
from kiln.pipeline import compilation


class Recorder(Instrument):
    def __init__(self):
        self.seen = []

    def run_before_pass(self, step, ir):
        self.seen.append(("before", step.name, step.stage))

    def run_after_pass(self, step, before, after, record):
        self.seen.append(("after", step.name, step.stage, type(after).__name__, record.index))


def _recipe(model, inputs, **compression):
    graph, flat, reference = capture(model, inputs)
    calibration = [inputs]
    pipeline = resolve_pipeline("O3", compression=pruning_passes(kiln.Prune(ratio=0.25), 8, calibration),
                                quantization=quantization_passes("int8", calibration))
    context = BuildContext(resolve_target("llvm"), inputs=flat, reference=reference)
    return graph, pipeline, context


def test_the_recipe_runs_compression_passes_quantization_then_tvm_in_one_list():
    graph, pipeline, context = _recipe(models.SmallCNN().eval(), (torch.randn(2, 3, 32, 32),))
    steps = compilation(pipeline, get_backend("tvm"), context)
    names = [step.name for step in steps]
    stages = [step.stage for step in steps]
    assert names[0] == "input"
    assert names.index("prune_channels") < names.index("fold_batch_norm") < names.index("quantize_int8") < names.index("import")
    assert names.index("import") < names.index("FuseOps") < names.index("ScheduleCPU") < names.index("codegen") == len(names) - 1
    assert stages == sorted(stages, key=lambda stage: stage != "kiln")  # Kiln's steps, then the backend's, never mixed


def test_one_instrument_sees_every_step_kiln_and_tvm_alike_and_each_row_is_its_step():
    graph, pipeline, context = _recipe(models.SmallCNN().eval(), (torch.randn(2, 3, 32, 32),))
    recorder, outputs = Recorder(), Outputs(context.inputs, context.reference)
    steps = compilation(pipeline, get_backend("tvm"), context)
    executable = run_steps(graph, steps, context.report, [recorder, *standard_instruments(None, context.debug, outputs)])
    afters = [entry for entry in recorder.seen if entry[0] == "after"]
    assert [entry[1] for entry in afters] == [step.name for step in steps] == [row.name for row in context.report.rows]
    assert [entry[0] for entry in recorder.seen] == ["before", "after"] * len(steps)
    kinds = {entry[2]: set() for entry in afters}
    for entry in afters:
        kinds[entry[2]].add(entry[3])
    assert kinds["kiln"] == {Graph.__name__} and tvm.IRModule.__name__ in kinds["tvm"]
    assert all(row.seconds > 0 for row in context.report.rows if row.name != "input")
    # the drift instrument measured each graph pass and the executable, not TVM's modules
    drifts = {row.name: row.drift for row in context.report.rows}
    assert drifts["quantize_int8"] is not None and drifts["codegen"] is not None and drifts["FuseOps"] is None
    assert outputs.graph is not None and len(executable(context.inputs)) == len(context.reference)


def test_disabling_static_quantization_leaves_a_float_build():
    model, inputs = models.SmallCNN().eval(), (torch.randn(2, 3, 32, 32),)
    quantized = kiln.compile(model, inputs, quantize="int8", calibration=[inputs], cache=False)
    plain = kiln.compile(model, inputs, quantize="int8", calibration=[inputs], disable=["quantize_int8"], cache=False)
    assert "quantize_int8" in [row.name for row in quantized.report.rows]
    assert "quantize_int8" not in [row.name for row in plain.report.rows]
    torch.testing.assert_close(plain(*inputs), model(*inputs), rtol=1e-4, atol=1e-4)
