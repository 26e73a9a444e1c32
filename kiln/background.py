"""Work Kiln finishes after handing the caller its result: writing a build into the compile cache
(seconds for a large model, which the caller need not wait for). Each piece runs on a thread of
its own, under a key; whoever needs its result waits for that key, and timing code waits for all
of it first (it would take a core from whatever is being timed). Python waits for these threads
before the process exits."""

from __future__ import annotations

import threading
from typing import Callable

_PENDING: dict[str, threading.Thread] = {}  # what this process is still doing, by key


def start(key: str, work: Callable[[], None]) -> None:
    """`work()` on a thread of its own, known as `key` until it ends."""

    def run() -> None:
        try:
            work()
        finally:
            _PENDING.pop(key, None)

    thread = threading.Thread(target=run, name=f"kiln-{key[:16]}")
    _PENDING[key] = thread
    thread.start()


def wait(key: str) -> None:
    """Return once the work known as `key` (if any) has ended."""
    thread = _PENDING.get(key)
    if thread is not None:
        thread.join()


def wait_all() -> None:
    """Return once everything this process started here has ended."""
    for thread in list(_PENDING.values()):
        thread.join()
