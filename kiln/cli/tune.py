"""`kiln tune`: tune a bundled model's kernels on this machine (resumable)."""

from __future__ import annotations

import argparse

from kiln.models.zoo import DEMOS


def tune(args: argparse.Namespace) -> int:
    import kiln

    model, inputs = DEMOS[args.model]()
    summary = kiln.tune(
        model, inputs, trials=args.trials, target=args.target, threads=args.threads, tuning_dir=args.tuning_dir,
        remote=args.remote, tracker=args.tracker, key=args.key,
    )
    print(summary.table())
    print(f"\nkiln.compile of this model for target '{args.target}' now uses these schedules (see its ApplyTuningDatabase row).")
    return 0


def add_command(commands) -> None:
    run_tune = commands.add_parser("tune", help="tune a bundled model's kernels on this machine (resumable)")
    run_tune.add_argument("--model", choices=sorted(DEMOS), default="resnet18")
    run_tune.add_argument("--trials", type=int, default=200, help="measured candidates in all, shared by FLOPs")
    run_tune.add_argument("--target", default="llvm")
    run_tune.add_argument("--threads", type=int, default=None)
    run_tune.add_argument("--tuning-dir", default=None, help="database root (default $KILN_TUNING_DIR or ~/.cache/kiln/tuning)")
    run_tune.add_argument("--remote", default=None, help="time candidates on the board whose TVM RPC server is at host:port")
    run_tune.add_argument("--tracker", default=None, help="time candidates on every board registered with this TVM RPC tracker (host:port)")
    run_tune.add_argument("--key", default=None, help="the boards' key at the tracker, e.g. rpi4")
    run_tune.set_defaults(run=tune)
