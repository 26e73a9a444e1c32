"""How many threads compiled TVM code runs on.

TVM sizes its thread pool once per process, from TVM_NUM_THREADS or, without it, from a guess that
on some virtual machines is a single core. Kiln therefore sets TVM_NUM_THREADS to every core this
process may run on (unless the user set it) before the pool exists; a module compiled with
`threads=N` then narrows the pool of the calling thread to N for its calls.
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


def size_thread_pool() -> None:
    """Before TVM's runtime first runs parallel code: allow it every usable core."""
    os.environ.setdefault("TVM_NUM_THREADS", str(usable_cores()))


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
