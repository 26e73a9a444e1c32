"""Tune the benchmark models on this machine (`kiln.tune`), so that `benchmarks/run.py` measures
Kiln tuned beside Kiln untuned. Writes benchmarks/results/tuning.md: per model the trial budget,
the tuning time and every task's default and tuned time.

    python benchmarks/tune.py --trials 128                          # the three benchmark CNN/BERT models
    python benchmarks/tune.py --models mobilenet_v2 --trials 64
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODELS = "resnet18,mobilenet_v2,bert_base_12l"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated subset of benchmarks/models.py")
    parser.add_argument("--trials", type=int, default=128, help="measured candidates per model, shared by FLOPs × calls")
    parser.add_argument("--bert-layers", type=int, default=12)
    args = parser.parse_args()

    import kiln
    from benchmarks.models import benchmark_models
    from benchmarks.run import cpu_description
    from kiln.backends.tvm.cpu.host import host_cpu
    from kiln.backends.tvm.runtime.threads import size_thread_pool, usable_cores

    size_thread_pool()
    zoo = benchmark_models(args.bert_layers)
    cpu, _ = cpu_description()
    host = host_cpu()
    lines = [
        f"# Tuning the benchmark models — {datetime.date.today().isoformat()}",
        "",
        f"CPU: {cpu} (LLVM {host['mcpu']}; {', '.join(host['simd'])}), {usable_cores()} cores; MetaSchedule's runner times "
        f"candidates on all of them. `python benchmarks/tune.py --trials {args.trials}`.",
        "",
    ]
    for name in args.models.split(","):
        model, inputs = zoo[name]()
        summary = kiln.tune(model, inputs, trials=args.trials)
        faster = sum(t.best_seconds < t.default_seconds for t in summary.tasks)
        heading = f"## {name}: {args.trials} trials, {summary.seconds:.0f} s, {faster} of {len(summary.tasks)} tasks faster than Kiln's default"
        print(heading, file=sys.stderr, flush=True)
        lines += [
            heading,
            "",
            "```",
            summary.table().split("\n", 1)[1],  # without the first line, the database path on this machine
            "```",
            "",
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
