"""The TVM backend: Kiln IR → Relax → fused, scheduled TIR → LLVM → Relax VM."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import tvm

from kiln.backends.base import BuildContext
from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.runtime.executable import TVMExecutable
from kiln.backends.tvm.index_guard import guard_indices
from kiln.backends.tvm.kernel_check import first_disagreeing_kernel
from kiln.backends.tvm.lower import to_relax
from kiln.backends.tvm.provenance import kernel_sources
from kiln.backends.tvm.pipeline import build, fusion_passes, kernel_info, run_passes, schedule_passes
from kiln.backends.tvm.tuning.database import RECORDS_FILE, TuningDatabase
from kiln.backends.tvm.unlowered import refuse_unlowered
from kiln.backends.tvm.runtime.threads import size_thread_pool
from kiln.ir.graph import Graph
from kiln.report.records import Drift, PassRecord

size_thread_pool()


def lower_and_fuse(graph: Graph, context: BuildContext, sources: dict[str, list[str]] | None = None) -> tvm.IRModule:
    """Kiln graph → Relax with fused, not yet scheduled TIR functions (what tuning works on);
    `sources` is filled with the Kiln nodes each kernel computes (kiln/backends/tvm/provenance.py)."""
    target = tvm.target.Target(context.target.tvm_target)
    context.say("import into TVM Relax")
    start = time.perf_counter()
    mod = to_relax(graph)
    record = context.report.add(PassRecord(context.report.next_index(), "import", "tvm", time.perf_counter() - start))
    if context.debug.enabled:
        context.debug.dump(record.index, "tvm_import", mod.script(show_meta=False), suffix=".py")
    def observe(name: str, before: tvm.IRModule, after: tvm.IRModule) -> None:
        if name == "FuseOps" and sources is not None:
            sources.update(kernel_sources(before, after, (node.name for node in graph.nodes)))

    return run_passes(mod, target, fusion_passes(target), context, observe)


class TVMBackend:
    name = "tvm"

    def build(self, graph: Graph, context: BuildContext) -> TVMExecutable:
        target = tvm.target.Target(context.target.tvm_target)
        if context.target.toolchain is not None:
            context.target.toolchain.require(context.target.name)  # fail before the long part
        sources: dict[str, list[str]] = {}
        graph, index_checks = guard_indices(graph)
        mod = lower_and_fuse(graph, context, sources)
        database = TuningDatabase.for_target(context.tuning_dir, target)
        if not database.exists() and database.others():
            note = f"no records for {database.path.name}; not used (other CPU/target): {', '.join(database.others())}"
            context.report.add(PassRecord(context.report.next_index(), "ApplyTuningDatabase", "tvm", 0.0, note=note))
        mod = run_passes(mod, target, schedule_passes(database, target), context)
        refuse_unlowered(mod, graph)
        if context.debug.enabled:  # the fused kernels, drawn by the HTML report beside the graph passes
            from kiln.report.graph_view import kernel_graph_data

            context.debug.dump(context.report.rows[-1].index, "tvm_kernels", json.dumps(kernel_graph_data(mod)), suffix=".graph.json")
        program, weights = build(mod, target, context)
        executable = TVMExecutable(context.target, context.threads, library=program, weights=weights, kernels=kernel_info(mod, sources),
                                   index_checks=index_checks)
        if context.inputs is not None and context.reference is not None and executable.why_not_here() is None:
            context.report.rows[-1].drift = Drift.between(executable(context.inputs), context.reference)
        return executable

    def identity(self, target: ResolvedTarget, tuning_dir: Path | None) -> dict[str, Any]:
        """The target with its CPU features, and the SHA-256 of the tuning records a build for it
        would apply (None without any)."""
        records = TuningDatabase.for_target(tuning_dir, tvm.target.Target(target.tvm_target)).path / RECORDS_FILE
        tuning = hashlib.sha256(records.read_bytes()).hexdigest() if records.is_file() else None
        return {"target": [target.name, target.tvm_target, target.cpu_features], "tuning": tuning}

    def locate_disagreement(self, executable: TVMExecutable, graph: Graph, inputs, tolerance: float) -> str:
        return first_disagreeing_kernel(executable, graph, inputs, tolerance)

    def load(self, folder: Path, target: ResolvedTarget, threads: int | None,
             mapped: dict[str, Any] | None = None) -> TVMExecutable:
        return TVMExecutable.load(folder, target, threads, mapped)
