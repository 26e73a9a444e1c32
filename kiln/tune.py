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
    tasks: list  # kiln.backends.tvm.tuning.TaskResult
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
    progress: Callable[[str], None] | None = None,
) -> TuneSummary:
    """Tune `model`'s kernels with `trials` measured candidates in all, shared by FLOPs × calls.

    Progress lines (task, trials, default vs best time, elapsed, ETA) go to `progress`, by default
    to stderr. Interrupted, it resumes where it stopped when run again with the same arguments.
    """
    from kiln.backends.tvm import lower_and_fuse
    from kiln.backends.tvm.threads import usable_cores
    from kiln.backends.tvm.tuning import tune_module
    from kiln.backends.tvm.tuning_database import TuningDatabase
    import tvm

    resolved = resolve_target(target)
    if resolved.backend != "tvm":
        raise TargetError(f"target '{resolved.name}' has nothing to tune (backend {resolved.backend})")
    say = progress or (lambda m: print(f"[kiln tune] {m}", file=sys.stderr, flush=True))
    start = time.perf_counter()
    graph, _ = PassManager(resolve_pipeline(opt_level)).run(from_torch(model.eval(), example_inputs))
    tvm_target = tvm.target.Target(resolved.tvm_target)
    mod = lower_and_fuse(graph, BuildContext(resolved))
    database = TuningDatabase.for_target(Path(tuning_dir) if tuning_dir else None, tvm_target)
    results = tune_module(mod, tvm_target, database, trials, threads or usable_cores(), say)
    return TuneSummary(database.path, results, time.perf_counter() - start)
