"""Many cases run in worker processes, so that a case whose compiled code kills its process is
recorded as a crash and the run goes on: what every conformance table and fuzzer here shares.

A worker is this same script started with the range of cases it runs; it `report`s one line per
case as it finishes. The parent splits the cases over `jobs` shards, each a thread that starts
workers one after another: when a worker ends before its range does, the case it was on crashed
it, and the next worker starts after that case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Callable

_LINE = "kiln-case"


def report(index: int, *fields: str) -> None:
    """In a worker: case `index` is done, with these fields (one line, tabs and newlines folded)."""
    clean = [" ".join(str(field).split()) for field in fields]
    print("\t".join([_LINE, str(index), *clean]), flush=True)


def run_cases(count: int, worker_arguments: Callable[[int, int], list[str]], jobs: int | None = None,
              progress: Callable[[dict[int, list[str]]], str] | None = None) -> dict[int, list[str] | None]:
    """Case index -> the fields its worker reported, or None for a case that killed its worker.
    `worker_arguments(first, end)` are the command-line arguments (after the script) of a worker
    running cases first..end-1; `progress(results)` is printed every 30 s."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, count))
    results: dict[int, list[str] | None] = {}
    lock = threading.Lock()

    def shard(first: int, end: int) -> None:
        position = first
        while position < end:
            command = [sys.executable, sys.argv[0], *worker_arguments(position, end)]
            worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ)
            for line in worker.stdout:
                if line.startswith(_LINE + "\t"):
                    _, index, *fields = line.rstrip("\n").split("\t")
                    with lock:
                        results[int(index)] = fields
                    position = int(index) + 1
            code = worker.wait()
            if position < end:  # the worker died on this case
                with lock:
                    results[position] = None
                print(f"[isolated] case {position} ended its worker with status {code}", file=sys.stderr, flush=True)
                position += 1

    size = -(-count // jobs)
    threads = [threading.Thread(target=shard, args=(first, min(first + size, count))) for first in range(0, count, size)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=30 / len(threads))
        if progress is not None:
            with lock:
                line = progress(dict(results))
            print(f"[{len(results)}/{count}, {time.perf_counter() - start:.0f} s] {line}", file=sys.stderr, flush=True)
    return results
