"""Auto-tuning with MetaSchedule: search schedules for a model's fused functions and keep the best
in the target's database, where every later compile for the same CPU finds them.

- Budget goes where the time goes: each task gets trials in proportion to FLOPs × calls.
- Kiln's default schedule of every task is measured first and committed as a record, so the
  database's best is never slower than untuned Kiln.
- Progress is saved after every task (the records themselves as they are measured): an interrupted
  run, started again, continues with the tasks and trials it has not done.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops

from kiln.backends.tvm.schedule_rules import default_schedule
from kiln.backends.tvm.tuning.database import STATE_FILE, TuningDatabase



@dataclass
class TaskResult:
    name: str
    flops: float  # per call
    calls: int
    trials: int
    default_seconds: float
    best_seconds: float


def _mean(run_secs) -> float:
    values = [float(v) for v in run_secs]
    return sum(values) / len(values)


def _allocate(costs: list[float], trials: int) -> list[int]:
    """Trials per task in proportion to cost; a task whose share is under 2 trials gets none
    (its default schedule stays, measured)."""
    total = sum(costs) or 1.0
    shares = [int(round(trials * cost / total)) for cost in costs]
    return [share if share >= 2 else 0 for share in shares]


BUILD_FUNCTION = "kiln.tuning.build_candidate"
EXPORT_FUNCTION = "kiln.tuning.export_candidate"
BOARD_SESSION_FUNCTION = "kiln.tuning.connect_board"


def _build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's default build, without its import of every tensor intrinsic of every target
    (48 s of CPU on these machines, paid again by each builder process, i.e. per batch of
    candidates); Kiln's fp32 CPU search spaces use none of them."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.driver.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def register_build_candidate(cross_compiler: str | None = None) -> None:
    """Runs in each builder process (LocalBuilder's initializer). With a cross compiler, candidates
    are linked into shared libraries for the board (MetaSchedule's default, a tar of objects,
    needs a compiler on the board to load)."""
    tvm.register_global_func(BUILD_FUNCTION, _build_candidate, override=True)
    if cross_compiler is not None:
        import os
        import tempfile

        from tvm.support import cc

        def export(module: tvm.runtime.Module) -> str:
            path = os.path.join(tempfile.mkdtemp(), "candidate.so")
            module.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
            return path

        tvm.register_global_func(EXPORT_FUNCTION, export, override=True)


ALLOC_FUNCTION = "kiln.tuning.alloc_arguments"


def register_runner_functions(board: tuple[str, int] | None) -> None:
    """Runs in each RPC runner process. Arguments are filled with host-made random data (the board
    may run only TVM's runtime library, without MetaSchedule's random-fill kernel); with `board`,
    sessions go straight to that one RPC server instead of through a tracker."""
    import numpy as np
    from tvm import rpc
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    rng = np.random.default_rng(0)

    def fill(tensor: tvm.runtime.Tensor) -> None:
        tensor.copyfrom(rng.uniform(-1, 1, size=[int(d) for d in tensor.shape]).astype(tensor.dtype))

    tvm.register_global_func(
        ALLOC_FUNCTION, lambda _session, device, args, repeat: alloc_argument_common(fill, device, args, repeat), override=True
    )
    if board is not None:
        host, port = board
        tvm.register_global_func(BOARD_SESSION_FUNCTION, lambda _config: rpc.connect(host, port, session_timeout=600), override=True)


def make_builder(cross_compiler: str | None = None) -> ms.builder.LocalBuilder:
    return ms.builder.LocalBuilder(
        f_build=BUILD_FUNCTION, f_export=EXPORT_FUNCTION if cross_compiler else None,
        initializer=functools.partial(register_build_candidate, cross_compiler), timeout_sec=120,
    )


@dataclass(frozen=True)
class Measurement:
    """Where candidates are timed: this machine, one board's RPC server (`remote`), or every
    board registered with a TVM RPC tracker under `key` (`tracker`), in parallel."""

    remote: str | None = None
    tracker: str | None = None
    key: str | None = None
    boards: int = 1  # runner workers: the boards measuring at once

    def runner(self) -> ms.runner.Runner:
        if self.remote is None and self.tracker is None:
            return ms.runner.LocalRunner()
        from kiln.backends.tvm.runtime.remote import parse_address

        host, port = parse_address(self.tracker or self.remote)
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=self.key or "direct", session_timeout_sec=600)
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0)
        direct = self.tracker is None
        return ms.runner.RPCRunner(
            config, evaluator, f_alloc_argument=ALLOC_FUNCTION, f_create_session=BOARD_SESSION_FUNCTION if direct else None,
            max_workers=1 if direct else self.boards,
            initializer=functools.partial(register_runner_functions, (host, port) if direct else None),
        )


class _Measurer:
    """Builds and times scheduled functions the way MetaSchedule times its candidates."""

    def __init__(self, target: tvm.target.Target, measurement: Measurement, cross_compiler: str | None) -> None:
        self.target = target
        self.builder = make_builder(cross_compiler)
        self.runner = measurement.runner()

    def seconds(self, scheduled: list[tvm.IRModule], workloads: list[tvm.IRModule]) -> list[list[float] | str]:
        """Run seconds of each, or why it could not run (one batch, one builder and one runner pool
        for all: pools cost seconds to start)."""
        built = self.builder.build([ms.builder.BuilderInput(mod, self.target) for mod in scheduled])
        for result in built:
            if result.error_msg:
                raise RuntimeError(f"building a default schedule failed: {result.error_msg}")
        device = "cuda" if self.target.kind.name == "cuda" else "cpu"
        inputs = [
            ms.runner.RunnerInput(result.artifact_path, device, ms.arg_info.ArgInfo.from_prim_func(workload["main"]))
            for result, workload in zip(built, workloads)
        ]
        measured = [future.result() for future in self.runner.run(inputs)]
        return [result.error_msg or [float(s) for s in result.run_secs] for result in measured]


def _seed_defaults(tasks, target, records, measurer: _Measurer, state: dict, say) -> None:
    """Measure Kiln's default schedule of every task not yet seeded and commit it as a record."""
    missing = [task for task in tasks if not {"default_seconds", "unmeasurable"} & set(state.setdefault(task.task_name, {"trials": 0}))]
    if not missing:
        return
    say(f"measuring Kiln's default schedules of {len(missing)} tasks")
    schedules = [default_schedule(task.dispatched[0]["main"], target) for task in missing]
    timings = measurer.seconds([s.mod for s in schedules], [t.dispatched[0] for t in missing])
    for task, schedule, run_secs in zip(missing, schedules, timings):
        if isinstance(run_secs, str):
            # MetaSchedule times kernels on random inputs; an embedding's gather reads random
            # indices out of bounds and crashes the runner: that kernel keeps Kiln's schedule
            state[task.task_name]["unmeasurable"] = run_secs.strip().splitlines()[-1][:200]
            say(f"{task.task_name}: not tuned, it cannot run on random inputs (e.g. a gather's indices); Kiln's schedule stays")
            continue
        workload = task.dispatched[0]
        records.commit_tuning_record(
            ms.database.TuningRecord(
                schedule.trace, records.commit_workload(workload), run_secs, target,
                ms.arg_info.ArgInfo.from_prim_func(workload["main"]),
            )
        )
        state[task.task_name]["default_seconds"] = _mean(run_secs)


def tune_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    database: TuningDatabase,
    trials: int,
    threads: int,
    say: Callable[[str], None],
    measurement: Measurement = Measurement(),
    cross_compiler: str | None = None,
) -> list[TaskResult]:
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    records = database.open()
    state_path = database.path / STATE_FILE
    state = database.progress()
    measurer = _Measurer(target, measurement, cross_compiler)
    _seed_defaults(tasks, target, records, measurer, state, say)
    state_path.write_text(json.dumps(state, indent=1))
    tasks = [task for task in tasks if "unmeasurable" not in state[task.task_name]]
    flops = [float(estimate_tir_flops(task.dispatched[0])) for task in tasks]
    budgets = _allocate([f * task.weight for f, task in zip(flops, tasks)], trials)
    order = sorted(range(len(tasks)), key=lambda i: -flops[i] * tasks[i].weight)
    planned = sum(max(budgets[i] - state.get(tasks[i].task_name, {}).get("trials", 0), 0) for i in order)
    say(f"{len(tasks)} tasks, {trials} trials budgeted, {planned} still to run; database {database.path}")
    start, done, results = time.perf_counter(), 0, []
    for position, index in enumerate(order, 1):
        task, workload = tasks[index], tasks[index].dispatched[0]
        entry = state[task.task_name]
        remaining = budgets[index] - entry["trials"]
        if remaining > 0:
            context = ms.TuneContext(
                mod=workload, target=target, space_generator="post-order-apply", search_strategy="evolutionary",
                task_name=task.task_name, num_threads=threads,
            ).clone()
            ms.tune_tasks(
                tasks=[context], task_weights=[1.0], work_dir=str(database.path), max_trials_global=remaining,
                num_trials_per_iter=min(32, remaining), database=records, task_scheduler="round-robin",
                builder=measurer.builder, runner=measurer.runner,
            )
            entry["trials"] = budgets[index]
            state_path.write_text(json.dumps(state, indent=1))
            done += remaining
        best = records.query_tuning_record(workload, target, "main")
        best_seconds = _mean(best.run_secs) if best is not None else entry["default_seconds"]
        results.append(TaskResult(task.task_name, flops[index], task.weight, entry["trials"], entry["default_seconds"], best_seconds))
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (planned - done) if done else 0.0
        say(
            f"[{position:>2}/{len(tasks)}] {task.task_name}: {entry['trials']} trials, "
            f"default {entry['default_seconds'] * 1e3:.3f} ms -> best {best_seconds * 1e3:.3f} ms "
            f"(elapsed {elapsed:.0f} s, ETA {eta:.0f} s)"
        )
    return results
