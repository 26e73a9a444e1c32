"""Progress of long work inside a pass (calibration, sensitivity trials, Taylor scores): a line on
stderr that counts up in place on a terminal, and one final line with the time it took."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Sized, TypeVar

Item = TypeVar("Item")


def progress(items: Iterable[Item], what: str) -> Iterator[Item]:
    total = len(items) if isinstance(items, Sized) else None
    live = sys.stderr.isatty()
    start, done = time.perf_counter(), 0
    for done, item in enumerate(items, 1):
        if live:
            print(f"\r[kiln] {what}: {done}/{total or '?'}", end="", file=sys.stderr, flush=True)
        yield item
    print(f"{chr(13) if live else ''}[kiln] {what}: {done} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
