"""`cm.profile()`: where a compiled module's time goes, kernel by kernel.

TVM 0.27's Relax VM has no profiler of its own any more, so Kiln times every call the VM makes
through its instrument hook (before and after each Call instruction), over several runs, and
keeps per kernel the median of its time in a run. The module's own latency is measured in the
same process without the hook, each plain run beside an instrumented one (a busy machine slows
both alike), so the rows can be checked against it: what the kernels do not account for is the
VM's own work between calls (allocation, argument passing).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from kiln.errors import TargetError

VM_BUILTIN = "vm.builtin."


@dataclass
class KernelTime:
    kernel: str
    calls: int  # per run
    ms: float  # median over the runs of this kernel's time in one run
    share: float  # of the kernels' total
    flops: float | None = None  # per run, from TVM's estimate of the kernel's TIR
    gflops: float | None = None
    of_peak: float | None = None  # gflops ÷ the module's fp32 FMA peak (Profile.peak_gflops)
    instructions: str = ""  # the dot-product / tile instructions its code uses
    rule: str = ""  # the schedule strategies that scheduled it (none: a tuning record's, or DLight's)
    sources: list[str] = field(default_factory=list)  # the Kiln graph nodes it computes (kiln/backends/tvm/provenance.py)


@dataclass
class Profile:
    kernels: list[KernelTime]
    latency_ms: float  # the module's median latency, not instrumented
    runs: int
    peak_gflops: float | None = None  # fp32 FMA peak of the cores it ran on, measured (kiln/backends/tvm/runtime/peak.py)

    @property
    def kernels_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    def to_json(self) -> dict[str, Any]:
        return {"kernels": [asdict(k) for k in self.kernels], "latency_ms": self.latency_ms, "runs": self.runs,
                "kernels_ms": self.kernels_ms, "peak_gflops": self.peak_gflops}

    def table(self) -> str:
        lines = [f"{'kernel':48} {'calls':>5} {'ms':>8} {'share':>6} {'GFLOP/s':>8} {'of peak':>7}  schedule / instructions"]
        for k in self.kernels:
            rate = f"{k.gflops:8.1f}" if k.gflops is not None else f"{'':8}"
            peak = f"{k.of_peak:7.1%}" if k.of_peak is not None else f"{'':7}"
            lines.append(f"{k.kernel[:48]:48} {k.calls:5d} {k.ms:8.3f} {k.share:6.1%} {rate} {peak}  "
                         f"{' / '.join(part for part in (k.rule, k.instructions) if part)}"
                         f"{'  <- ' + ', '.join(k.sources) if k.sources else ''}")
        peak = f"; fp32 FMA peak {self.peak_gflops:.0f} GFLOP/s" if self.peak_gflops else ""
        lines.append(f"kernels {self.kernels_ms:.3f} ms of the module's {self.latency_ms:.3f} ms (median of {self.runs} runs){peak}")
        return "\n".join(lines)


def profile_executable(executable, inputs: Sequence[torch.Tensor], runs: int = 10) -> Profile:
    """Per-kernel times of a TVM executable that runs in this process, on `inputs`."""
    reason = executable.why_not_here() if hasattr(executable, "why_not_here") else "not a TVM module"
    if reason is not None:
        raise TargetError(f"profile() runs the module here: {reason}")
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = {}
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if symbol.startswith(VM_BUILTIN) or not per_run:
            return 0
        if before_run:
            started.append(time.perf_counter())
        else:
            seconds = time.perf_counter() - started.pop()
            current = per_run[-1]
            current[symbol] = current.get(symbol, 0.0) + seconds
            if len(per_run) == 1:
                calls[symbol] = calls.get(symbol, 0) + 1
        return 0

    vm = executable.instrumented_vm(instrument)
    executable(inputs)  # warm: first calls JIT and allocate
    vm(inputs)  # not recorded: `per_run` is still empty
    plain = []
    for _ in range(runs):  # interleaved: a busy machine slows both alike
        plain.append(_timed(lambda: executable(inputs)))
        per_run.append({})
        vm(inputs)
    latency = statistics.median(plain)
    info = executable.kernel_info
    peak = _peak(executable)
    medians = {name: statistics.median(run.get(name, 0.0) for run in per_run) * 1e3 for name in calls}
    total = sum(medians.values()) or 1.0
    kernels = []
    for name, ms in sorted(medians.items(), key=lambda item: -item[1]):
        flops = info.get(name, {}).get("flops")
        flops = flops * calls[name] if flops is not None else None
        gflops = flops / (ms * 1e6) if flops and ms > 0 else None
        facts = info.get(name, {})
        kernels.append(KernelTime(name, calls[name], ms, ms / total, flops, gflops, gflops / peak if gflops is not None and peak else None,
                                  facts.get("instructions", ""), facts.get("rule", ""), list(facts.get("sources", []))))
    return Profile(kernels, latency * 1e3, runs, peak)


def _peak(executable) -> float | None:
    """fp32 FMA GFLOP/s of the threads the module runs on: one core's, measured, times the threads."""
    if executable.target.device != "cpu":
        return None
    from kiln.backends.tvm.runtime.peak import fp32_peak_gflops

    per_core = fp32_peak_gflops()
    return per_core * executable._thread_count if per_core is not None else None


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start
