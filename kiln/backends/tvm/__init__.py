"""The TVM backend: Kiln IR → Relax → fused, scheduled TIR → LLVM → Relax VM."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import tvm

from kiln.backends.base import BackendSteps, BuildContext
from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.runtime.executable import TVMExecutable
from kiln.backends.tvm.index_guard import guard_indices
from kiln.backends.tvm.kernel_check import first_disagreeing_kernel
from kiln.backends.tvm.lower import to_relax
from kiln.backends.tvm.provenance import kernel_sources
from kiln.backends.tvm.pipeline import codegen_step, fusion_passes, kernel_info, schedule_passes, tvm_steps
from kiln.backends.tvm.tuning.database import RECORDS_FILE, TuningDatabase
from kiln.backends.tvm.unlowered import refuse_unlowered
from kiln.backends.tvm.runtime.threads import size_thread_pool
from kiln.ir.graph import Graph
from kiln.passes.instruments import standard_instruments
from kiln.passes.loop import Step, StepOutcome, run_steps

size_thread_pool()


class TVMBuild:
    """What one build's steps share: the graph's index checks (kiln/backends/tvm/index_guard.py)
    and the Kiln nodes each fused kernel computes (kiln/backends/tvm/provenance.py), which the
    executable carries."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context
        self.graph: Graph | None = None
        self.index_checks: list = []
        self.sources: dict[str, list[str]] = {}

    def import_graph(self, graph: Graph) -> StepOutcome:
        """Kiln graph → Relax, its indexing guarded first."""
        self.graph, self.index_checks = guard_indices(graph)
        note = f"{len(self.index_checks)} index checks" if self.index_checks else ""
        return StepOutcome(to_relax(self.graph), note=note)

    def observe(self, name: str, before: tvm.IRModule, after: tvm.IRModule) -> None:
        if name == "FuseOps":
            self.sources.update(kernel_sources(before, after, (node.name for node in self.graph.nodes)))

    def check(self, mod: tvm.IRModule) -> None:
        """Before code generation: an op no lowering made a kernel is refused naming its node; with
        a debug directory, the fused kernels are drawn beside the graph passes (kiln/report/)."""
        refuse_unlowered(mod, self.graph)
        if self.context.debug.enabled:
            from kiln.report.graph_view import kernel_graph_data

            self.context.debug.dump(self.context.report.next_index() - 1, "tvm_kernels", json.dumps(kernel_graph_data(mod)),
                                    suffix=".graph.json")

    def executable(self, mod: tvm.IRModule, program, weights) -> TVMExecutable:
        return TVMExecutable(self.context.target, self.context.threads, library=program, weights=weights,
                             kernels=kernel_info(mod, self.sources), index_checks=self.index_checks)


def lower_and_fuse(graph: Graph, context: BuildContext) -> tvm.IRModule:
    """Kiln graph → Relax with fused, not yet scheduled TIR functions: what tuning works on."""
    steps = TVMBackend().steps(context)
    return run_steps(graph, steps.lowering + steps.passes, context.report, standard_instruments(context.progress, context.debug))


class TVMBackend:
    name = "tvm"

    def steps(self, context: BuildContext) -> BackendSteps:
        """Import into Relax → TVM's passes (layout, weight packing, fusion) → schedules (tuned
        records, then Kiln's rules) → code generation."""
        target = tvm.target.Target(context.target.tvm_target)
        if context.target.toolchain is not None:
            context.target.toolchain.require(context.target.name)  # fail before the long part
        build, folder = TVMBuild(context), context.debug.path
        database = TuningDatabase.for_target(context.tuning_dir, target)
        return BackendSteps(
            lowering=[Step("import", "tvm", build.import_graph)],
            passes=tvm_steps(fusion_passes(target), target, folder, build.observe),
            schedule=_records_elsewhere(database) + tvm_steps(schedule_passes(database, target), target, folder),
            codegen=[codegen_step(target, folder, build.check, build.executable)],
        )

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


def _records_elsewhere(database: TuningDatabase) -> list[Step]:
    """A row saying the tuning records found are for another CPU or target, where none are for this one."""
    if database.exists() or not database.others():
        return []
    note = f"no records for {database.path.name}; not used (other CPU/target): {', '.join(database.others())}"
    return [Step("ApplyTuningDatabase", "tvm", lambda mod: StepOutcome(mod, note=note))]
