"""`kiln.tune`: search better schedules for a model on this machine and remember them.

The records go to the target's tuning database; `kiln.compile` of the same model for the same
CPU afterwards uses them and says so in its report (`ApplyTuningDatabase`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kiln.backends import BuildContext, resolve_target
from kiln.errors import TargetError
from kiln.ir.torch_frontend import from_torch
from kiln.passes import PassManager, resolve_pipeline
from kiln.passes.pipelines import DEFAULT_LEVEL


@dataclass
class TuneSummary:
    database: Path
    tasks: list  # kiln.backends.tvm.tuning.search.TaskResult
    seconds: float

    def table(self) -> str:
        lines = [f"tuning database: {self.database}  ({self.seconds:.0f} s)", "task  trials  calls  GFLOP/call  default ms  tuned ms  speed-up"]
        for t in self.tasks:
            lines.append(
                f"{t.name}  {t.trials}  {t.calls}  {t.flops / 1e9:.3f}  {t.default_seconds * 1e3:.3f}  "
                f"{t.best_seconds * 1e3:.3f}  {t.default_seconds / t.best_seconds:.2f}x"
            )
        return "\n".join(lines)


def tune(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    *,
    trials: int = 200,
    target: str | dict[str, Any] = "llvm",
    opt_level: str = DEFAULT_LEVEL,
    threads: int | None = None,
    tuning_dir: str | Path | None = None,
    remote: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneSummary:
    """Tune `model`'s kernels with `trials` measured candidates in all, shared by FLOPs × calls.

    For a board target, candidates are cross-compiled here and timed on the board: one board's
    TVM RPC server at `remote="host:port"`, or every board registered with a TVM RPC tracker at
    `tracker="host:port"` under `key`, measuring in parallel (MetaSchedule's RPC runner). Records
    go to the database of that target, never of this machine's CPU.

    Progress lines (task, trials, default vs best time, elapsed, ETA) go to `progress`, by default
    to stderr. Interrupted, it resumes where it stopped when run again with the same arguments.
    """
    from kiln.backends.tvm import lower_and_fuse
    from kiln.backends.tvm.runtime.remote import warn_if_public
    from kiln.backends.tvm.runtime.threads import usable_cores
    from kiln.backends.tvm.tuning.search import Measurement, tune_module
    from kiln.backends.tvm.tuning.database import TuningDatabase
    import tvm

    resolved = resolve_target(target)
    if resolved.backend != "tvm":
        raise TargetError(f"target '{resolved.name}' has nothing to tune (backend {resolved.backend})")
    say = progress or (lambda m: print(f"[kiln tune] {m}", file=sys.stderr, flush=True))
    start = time.perf_counter()
    graph, _ = PassManager(resolve_pipeline(opt_level)).run(from_torch(model.eval(), example_inputs))
    tvm_target = tvm.target.Target(resolved.tvm_target)
    mod = lower_and_fuse(graph, BuildContext(resolved))  # the kernels a build compiles
    database = TuningDatabase.for_target(Path(tuning_dir) if tuning_dir else None, tvm_target)
    if resolved.cross and remote is None and tracker is None:
        raise TargetError(f"target '{resolved.name}' runs on a board: tune it there with remote='host:port' or tracker='host:port', key=...")
    for address in filter(None, (remote, tracker)):
        warn_if_public(address)
    measurement = Measurement(remote, tracker, key, boards=_registered_boards(tracker, key) if tracker else 1)
    toolchain = resolved.toolchain
    cross_compiler = toolchain.require(resolved.name) if toolchain else None
    results = tune_module(mod, tvm_target, database, trials, threads or usable_cores(), say, measurement, cross_compiler)
    return TuneSummary(database.path, results, time.perf_counter() - start)


def _registered_boards(tracker: str, key: str | None) -> int:
    """How many servers the tracker has under `key`: that many candidates are measured at once."""
    from tvm import rpc

    from kiln.backends.tvm.runtime.remote import parse_address

    if key is None:
        raise TargetError("tuning through a tracker needs the boards' key (e.g. key='rpi4')")
    host, port = parse_address(tracker)
    try:
        queue = rpc.connect_tracker(host, port).summary().get("queue_info", {}).get(key, {})
    except (RuntimeError, OSError) as error:
        raise TargetError(f"no TVM RPC tracker answers at {tracker}: {error}") from error
    boards = int(queue.get("free", 0)) + int(queue.get("pending", 0))
    if boards == 0:
        raise TargetError(f"the tracker at {tracker} has no boards registered under key '{key}'")
    return boards
