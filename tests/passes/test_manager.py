"""The pass manager's instrumentation: report, dumps, drift, pipeline edits, bisection."""

import pytest
import torch

import kiln
from kiln import models
from kiln.ir.graph import Graph
from kiln.passes import register_pass


@register_pass("test_plant_wrong_bias", "TEST ONLY: adds 0.5 to the last linear bias (a deliberately wrong pass)")
def plant_wrong_bias(graph: Graph) -> int:
    linear = [n for n in graph.nodes if n.op == "call_function" and "linear" in str(n.target)][-1]
    bias = graph.constant(linear.args[2])
    args = list(linear.args)
    args[2] = graph.add_constant(bias + 0.5, "planted_bias", before=linear)
    linear.args = tuple(args)
    return 1


PIPELINE = ["remove_noops", "fold_batch_norm", "cse", "test_plant_wrong_bias", "fold_constants", "dce"]


@pytest.fixture(scope="module")
def cnn():
    return models.SmallCNN().eval(), (torch.randn(2, 3, 32, 32),)


def test_debug_dir_has_ir_after_every_pass_and_drift_table(cnn, tmp_path):
    model, inputs = cnn
    compiled = kiln.compile(model, inputs, debug_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    kiln_rows = [r for r in compiled.report.rows if r.stage == "kiln"]
    tvm_rows = [r for r in compiled.report.rows if r.stage == "tvm"]
    for row in kiln_rows:
        assert f"{row.index:03d}_{row.name}.txt" in names
    for wanted in ("FuseOps", "FuseTIR", "LegalizeOps", "ScheduleCPU"):
        assert any(r.name == wanted for r in tvm_rows)
        assert any(n.endswith(f"_tvm_{wanted}.py") for n in names)
    assert {"report.txt", "report.json", "drift.tsv"} <= set(names)
    drift_lines = (tmp_path / "drift.tsv").read_text().splitlines()
    assert drift_lines[0].startswith("index\tpass") and len(drift_lines) == len(kiln_rows) + 2  # + codegen row
    ir = (tmp_path / "000_input.txt").read_text()
    assert "aten.batch_norm" in ir and "float32[2, 3, 32, 32]" in ir
    assert "aten.batch_norm" not in (tmp_path / f"{kiln_rows[-1].index:03d}_dce.txt").read_text()


def test_report_rows_carry_statistics_and_drift(cnn):
    model, inputs = cnn
    report = kiln.compile(model, inputs, target="eager").report
    fold = next(r for r in report.rows if r.name == "fold_batch_norm")
    before = report.rows[fold.index - 1]
    assert fold.changes == 2 and fold.stats.nodes < before.stats.nodes and fold.stats.params < before.stats.params
    assert fold.stats.flops == before.stats.flops > 0
    assert fold.drift.max_rel < 1e-5 and fold.drift.cosine > 0.999999
    assert "fold_batch_norm" in report.table()


def test_a_pass_that_changes_nothing_is_not_run_again_and_keeps_the_drift(cnn, monkeypatch):
    """The registry hands back the very graph a pass got when it changed nothing: its outputs are
    the previous pass's, so the manager does not run it again for the drift column."""
    model, inputs = cnn
    runs = []
    original = Graph.run
    monkeypatch.setattr(Graph, "run", lambda self, *args: runs.append(self) or original(self, *args))
    report = kiln.compile(model, inputs, target="eager", passes=["fold_batch_norm", "cse", "fold_batch_norm"]).report
    fold, cse, again = report.rows[1:4]
    assert (fold.name, cse.name, again.name) == ("fold_batch_norm", "cse", "fold_batch_norm")
    assert fold.changes == 2 and cse.changes == 0 and again.changes == 0
    # the captured graph, the one fold_batch_norm made, and that graph as the eager backend's build, held to eager
    assert len(runs) == 3 and runs[1] is runs[2]
    assert cse.drift == again.drift == fold.drift


def test_planted_bad_pass_shows_in_drift_and_bisection_names_it(cnn):
    model, inputs = cnn
    report = kiln.compile(model, inputs, target="eager", passes=PIPELINE).report
    assert report.first_drift_over(1e-4).name == "test_plant_wrong_bias"
    result = kiln.bisect(model, inputs, tolerance=1e-4, passes=PIPELINE, target="eager")
    assert result.culprit == "test_plant_wrong_bias" and result.index == 3
    assert result.runs <= 4  # log2(6) prefixes plus the full pipeline
    assert kiln.bisect(model, inputs, tolerance=1e-4, target="eager").culprit is None


def test_pipeline_edits(cnn):
    model, inputs = cnn
    names = lambda report: [r.name for r in report.rows if r.stage == "kiln"][1:]
    assert names(kiln.compile(model, inputs, target="eager", opt_level="O1").report) == ["remove_noops", "dce"]
    assert "cse" not in names(kiln.compile(model, inputs, target="eager", disable=["cse"]).report)
    stopped = kiln.compile(model, inputs, target="eager", stop_after="fold_batch_norm").report
    assert names(stopped) == ["remove_noops", "fold_batch_norm"]
    with pytest.raises(kiln.PassError, match="unknown optimization level"):
        kiln.compile(model, inputs, opt_level="O9")


@register_pass("test_plant_value_change", "TEST ONLY: claims to preserve values but scales the output", preserves_values=True)
def plant_value_change(graph: Graph) -> int:
    output = graph.output_node
    first = output.args[0][0]
    with graph.module.graph.inserting_before(output):
        scaled = graph.module.graph.call_function(torch.ops.aten.mul.Tensor, (first, 1.001))
    output.args = ((scaled, *output.args[0][1:]),)
    return 1


def test_verification_names_a_value_preserving_pass_that_moves_the_outputs(cnn):
    model, inputs = cnn
    pipeline = ["remove_noops", "test_plant_value_change", "dce"]
    with pytest.raises(kiln.PassError, match="pass 'test_plant_value_change' promises to preserve values"):
        kiln.compile(model, inputs, passes=pipeline, target="eager")


def test_every_cleanup_pass_preserves_values_on_the_zoo():
    """The property that would have caught MPNet's in-place bug: each value-preserving pass of O3
    leaves the outputs where the previous graph had them."""
    from kiln.compiler import capture
    from kiln.models import ZOO
    from kiln.passes import PassManager, get_pass, resolve_pipeline

    pipeline = resolve_pipeline("O3")
    assert all(get_pass(name).preserves_values for name, _ in pipeline)
    for name, build in ZOO.items():
        model, inputs = build()
        graph, flat, reference = capture(model, inputs)
        _, report = PassManager(pipeline, inputs=flat, reference=reference, verify=True).run(graph)
        assert all(row.drift.max_rel <= 1e-5 for row in report.rows), name


def test_an_in_place_op_is_neither_folded_nor_merged():
    from kiln.passes.rewrite import is_pure

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    add_ = graph.call_function(torch.ops.aten.add_.Tensor, (x, x))
    add = graph.call_function(torch.ops.aten.add.Tensor, (x, x))
    assert not is_pure(add_) and is_pure(add)


def _planted(monkeypatch, name: str) -> None:
    """The registered pass `name`, made to also scale the graph's outputs by 1.5 (a deliberately
    broken compression or quantization pass)."""
    from kiln.passes import registry

    real = registry.PASSES[name]

    def broken(graph: Graph, **options):
        real.rewrite(graph, **options)
        output = graph.output_node
        with graph.module.graph.inserting_before(output):
            scaled = [graph.module.graph.call_function(torch.ops.aten.mul.Tensor, (value, 1.5)) for value in output.args[0]]
        output.args = (tuple(scaled),)
        return 1

    monkeypatch.setitem(registry.PASSES, name, registry.Pass(name, real.description, broken, real.options,
                                                             real.preserves_values, real.stage))


def test_bisection_names_a_planted_bad_quantization_pass(cnn, monkeypatch):
    model, inputs = cnn
    _planted(monkeypatch, "quantize_dynamic_int8")
    result = kiln.bisect(model, inputs, tolerance=0.2, quantize="dynamic_int8", target="eager")
    assert result.culprit == "quantize_dynamic_int8", result


def test_bisection_names_a_planted_bad_pruning_pass(cnn, monkeypatch):
    model, inputs = cnn
    _planted(monkeypatch, "prune_channels")
    result = kiln.bisect(model, inputs, tolerance=0.3, prune=kiln.Prune(ratio=0.25), calibration=[inputs], target="eager")
    assert result.culprit == "prune_channels", result


def test_compression_and_quantization_are_passes_of_the_one_list(cnn):
    model, inputs = cnn
    quantized = kiln.compile(model, inputs, target="eager", quantize="dynamic_int8")
    assert "quantize_dynamic_int8" in [row.name for row in quantized.report.rows]
    unquantized = kiln.compile(model, inputs, target="eager", quantize="dynamic_int8", disable=["quantize_dynamic_int8"])
    assert "quantize_dynamic_int8" not in [row.name for row in unquantized.report.rows]
    pruned = kiln.compile(model, inputs, target="eager", prune=kiln.Prune(ratio=0.25), calibration=[inputs],
                          stop_after="prune_channels")
    assert [row.name for row in pruned.report.rows if row.stage == "kiln"] == ["input", "prune_heads", "prune_channels"]


def test_a_pipeline_out_of_stage_order_is_refused_naming_the_passes(cnn):
    model, inputs = cnn
    with pytest.raises(kiln.PassError, match=r"'prune_magnitude' \(compress\) comes after 'fold_batch_norm' \(optimize\)"):
        kiln.compile(model, inputs, target="eager", passes=["fold_batch_norm", "prune_magnitude"])
    with pytest.raises(kiln.PassError, match=r"'fold_constants' \(optimize\) comes after 'quantize_dynamic_int8'"):
        kiln.compile(model, inputs, target="eager", passes=["quantize_dynamic_int8", "fold_constants"])
