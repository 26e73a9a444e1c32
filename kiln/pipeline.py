"""The compilation, in the order it runs: one recipe.

`kiln.compile` captures the model (kiln/compiler.py: torch.export, an ONNX file made a module
first) and hands its graph to `compile_graph`, whose every step, Kiln's graph passes and the
backend's alike, runs through the one pass loop (kiln/passes/loop.py). The loop's instruments
give each step its report row, time, drift from the eager model, IR dump and progress line
(kiln/passes/instruments.py), so `disable=`, `stop_after=`, the debug directory and
`kiln.bisect` see compression and quantization as they see any pass.
"""

from __future__ import annotations

from typing import Any, Sequence

from kiln.backends import Backend, BuildContext, Executable
from kiln.ir.graph import Graph
from kiln.passes.instruments import Outputs, standard_instruments
from kiln.passes.loop import Step, run_steps
from kiln.passes.manager import graph_steps, input_step


def compilation(pipeline: Sequence[tuple[str, dict[str, Any]]], backend: Backend, context: BuildContext) -> list[Step]:
    """Every step after capture, in order. `pipeline` is the checked list of graph passes
    (kiln/passes/pipelines.py): its compression, optimization and quantization stages."""
    graph_passes = graph_steps(pipeline)
    backend_steps = backend.steps(context)
    return [
        input_step(),                   # the captured graph: the row every drift is measured from
        *graph_passes["compress"],      # prune=, low_rank=: channels, heads and ranks removed
        *graph_passes["optimize"],      # the optimization level's graph passes, or passes=
        *graph_passes["quantize"],      # quantize=: int8, calibrated on the graph that runs
        *backend_steps.lowering,        # into the backend's IR (TVM: index checks, then Relax)
        *backend_steps.passes,          # the backend's passes (TVM: layout, weight packing, fusion)
        *backend_steps.schedule,        # schedules (TVM: tuning records, then Kiln's rules)
        *backend_steps.codegen,         # code generation: the executable
    ]


def compile_graph(graph: Graph, pipeline: Sequence[tuple[str, dict[str, Any]]], backend: Backend, context: BuildContext,
                  verify: bool, pass_tolerance: float) -> tuple[Executable, Graph, Outputs]:
    """The executable, the last graph before the backend's IR, and the instrument holding that
    graph's outputs and the executable's on the context's inputs (what the build is held to). With
    `verify`, a value-preserving pass that moves the outputs by more than `pass_tolerance` of
    their scale is refused naming it."""
    outputs = Outputs(context.inputs, context.reference, verify, pass_tolerance)
    instruments = standard_instruments(context.progress, context.debug, outputs)
    executable = run_steps(graph, compilation(pipeline, backend, context), context.report, instruments)
    return executable, outputs.graph, outputs
