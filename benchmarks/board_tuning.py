"""Remote tuning end to end on emulated boards: a tracker with two aarch64 RPC servers under qemu,
a small CNN compiled for rpi4 and timed on a board, tuned through the tracker, recompiled, timed
again. Under emulation the absolute latencies mean little; the flow is what this shows.

    python benchmarks/board_tuning.py [--trials 16]    # writes benchmarks/results/board_tuning.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import kiln
from kiln.backends.tvm.runtime.emulated_board import start_server, start_tracker_with_servers
from kiln.models import SmallCNN

RESULTS = Path(__file__).parent / "results" / "board_tuning.md"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    database = tempfile.mkdtemp()
    boards = start_tracker_with_servers(2, "rpi4")
    try:
        timing_board = start_server()  # a tracker's servers take sessions only through the tracker
        boards.processes += timing_board.processes
        address = timing_board.address
        untuned = kiln.compile(model, (x,), target="rpi4", tuning_dir=database).to_remote(address)
        before = untuned.benchmark(x, repeat=20)
        del untuned  # an RPC server serves one session at a time: close this one
        start = time.perf_counter()
        summary = kiln.tune(model, (x,), trials=args.trials, target="rpi4", tracker=boards.address, key="rpi4", tuning_dir=database)
        seconds = time.perf_counter() - start
        tuned = kiln.compile(model, (x,), target="rpi4", tuning_dir=database).to_remote(address)
        after = tuned.benchmark(x, repeat=20)
        applied = next(r.note for r in tuned.report.rows if r.name == "ApplyTuningDatabase")
    finally:
        boards.stop()
    text = (
        "# Tuning on (emulated) rpi4 boards through a TVM RPC tracker\n\n"
        f"SmallCNN 1x3x32x32, two aarch64 RPC servers under qemu registered as 'rpi4', {args.trials} trials, "
        f"{seconds:.0f} s of tuning.\n\n"
        f"| | board latency (median of 20) |\n|---|---|\n| untuned | {before:.2f} ms |\n| tuned | {after:.2f} ms |\n\n"
        f"Recompile's ApplyTuningDatabase: {applied}\n\n```\n{summary.table()}\n```\n"
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
