"""The TVM backend: Kiln IR → Relax → fused, scheduled TIR → LLVM → Relax VM."""

from __future__ import annotations

import time
from pathlib import Path

import tvm

from kiln.backends.base import BuildContext
from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.executable import TVMExecutable
from kiln.backends.tvm.lower import to_relax
from kiln.backends.tvm.pipeline import build, run_graph_passes
from kiln.backends.tvm.threads import size_thread_pool
from kiln.ir.graph import Graph
from kiln.passes.instrument import Drift, PassRecord

size_thread_pool()


def _device(target: ResolvedTarget) -> tvm.runtime.Device:
    return tvm.runtime.device_from_target(tvm.target.Target(target.tvm_target))


class TVMBackend:
    name = "tvm"

    def build(self, graph: Graph, context: BuildContext) -> TVMExecutable:
        target = tvm.target.Target(context.target.tvm_target)
        context.say("import into TVM Relax")
        start = time.perf_counter()
        mod = to_relax(graph)
        record = context.report.add(PassRecord(context.report.next_index(), "import", "tvm", time.perf_counter() - start))
        if context.debug.enabled:
            context.debug.dump(record.index, "tvm_import", mod.script(show_meta=False), suffix=".py")
        mod = run_graph_passes(mod, target, context)
        executable = TVMExecutable(build(mod, target, context), _device(context.target), context.threads)
        if context.inputs is not None and context.reference is not None:
            context.report.rows[-1].drift = Drift.between(executable(context.inputs), context.reference)
        return executable

    def load(self, folder: Path, target: ResolvedTarget, threads: int | None) -> TVMExecutable:
        return TVMExecutable.load(folder, _device(target), threads)
