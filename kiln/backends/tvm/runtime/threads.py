"""How many threads compiled TVM code runs on.

TVM sizes its thread pool once per process, from TVM_NUM_THREADS or, without it, from a guess that
on some virtual machines is a single core. Kiln therefore sets TVM_NUM_THREADS to every core this
process may run on (unless the user set it) before the pool exists; a module compiled with
`threads=N` then narrows the pool of the calling thread to N for its calls.

TVM's idle workers also spin (`sched_yield` in a loop) for TVM_THREAD_POOL_SPIN_COUNT rounds
before they sleep: 300,000 by default, long after a run has returned. A process that runs PyTorch
right after a Kiln module (the compile cache's check against eager, the pass manager's drift,
user code around a compiled model) then has more runnable threads than cores, and PyTorch's
parallel ops wait on a descheduled thread: on a 2-core Zen 4 one float64 drift of BERT-base's
output right after a Kiln run took 5-85 ms instead of 0.7 ms, and a warm `kiln.compile` of
MobileNetV2 118 ms instead of 58 ms (benchmarks/results/thread_spin.md). A thousand rounds (about
a millisecond) keep the workers awake between the kernels of one run, at the same latency as
TVM's default; with none, MobileNetV2's small kernels wait on wake-ups (4.7 ms a call, not 3.7).
Kiln sets 1000 unless the user chose a count.
"""

from __future__ import annotations

import os
import threading

_configured = threading.local()  # TVM's pool is per calling thread, so is the setting


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


IDLE_SPIN_ROUNDS = 1000


def size_thread_pool() -> None:
    """Before TVM's runtime first runs parallel code: allow it every usable core, and let its idle
    workers sleep after about a millisecond."""
    os.environ.setdefault("TVM_NUM_THREADS", str(usable_cores()))
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(IDLE_SPIN_ROUNDS))


def pool_size() -> int:
    return int(os.environ.get("TVM_NUM_THREADS", usable_cores()))


def use_threads(count: int) -> None:
    """Run this thread's next TVM calls on `count` threads (called before every call: cheap when
    nothing changes)."""
    if getattr(_configured, "count", None) != count:
        import tvm_ffi

        big_cores = 1  # TVM's AffinityMode kBig: no pinning preference beyond "fast cores"
        tvm_ffi.get_global_func("runtime.config_threadpool")(big_cores, count)
        _configured.count = count
