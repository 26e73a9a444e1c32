"""What a dynamic sequence length costs: one BERT-like build with `dynamic_shapes` (sequence up
to 512, traced at 128) against a static build at each measured length, one process, interleaved
medians.

    python benchmarks/dynamic_shapes.py [--layers 4] [--threads 1] [--repeats 9]

Writes benchmarks/results/dynamic_shapes.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fuzz import cpu_name  # noqa: E402
from benchmarks.run import use_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--lengths", default="77,128,300")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dynamic_shapes.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    use_threads(args.threads)
    import torch
    from torch.export import Dim

    import kiln
    from kiln.models import EncoderConfig, TransformerEncoder
    from kiln.timing import interleaved_medians

    torch.manual_seed(0)
    config = EncoderConfig(vocab=30522, hidden=768, heads=12, layers=args.layers, intermediate=3072, max_positions=512)
    model = TransformerEncoder(config).eval()
    start = time.perf_counter()
    dynamic = kiln.compile(model, (torch.randint(0, 30522, (1, 128)),), threads=args.threads,
                           dynamic_shapes={"tokens": {1: Dim("seq", max=512)}})
    dynamic_seconds = time.perf_counter() - start
    rows = []
    for length in (int(n) for n in args.lengths.split(",")):
        tokens = torch.randint(0, 30522, (1, length))
        start = time.perf_counter()
        static = kiln.compile(model, (tokens,), threads=args.threads)
        static_seconds = time.perf_counter() - start
        medians = interleaved_medians({"static": lambda: static(tokens), "dynamic": lambda: dynamic(tokens)}, repeats=args.repeats)
        rows.append((length, medians["static"] * 1e3, medians["dynamic"] * 1e3, static_seconds))
        print(f"[dynamic] seq {length}: static {rows[-1][1]:.2f} ms, dynamic {rows[-1][2]:.2f} ms", file=sys.stderr, flush=True)
    lines = [
        "# A dynamic sequence length vs static builds",
        "",
        f"`python benchmarks/dynamic_shapes.py --layers {args.layers} --threads {args.threads}` on {cpu_name()}: "
        f"BERT-like encoder ({args.layers} layers, hidden 768, 12 heads), batch 1, fp32, median of {args.repeats} "
        f"interleaved turns. One dynamic build (seq ≤ 512, traced at 128; compiled in {dynamic_seconds:.1f} s) "
        "against a static build at each length.",
        "",
        "| sequence | static build | dynamic build | dynamic / static | static compile |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s:.2f} ms | {d:.2f} ms | {d / s:.2f}× | {c:.1f} s |" for n, s, d, c in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
