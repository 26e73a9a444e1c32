"""Where `torch.compile(model, backend="kiln")` spends the time a direct `kiln.compile` module does not.

    python benchmarks/dynamo_overhead.py [--model mobilenet_v2] [--threads 2] [--calls 300]

One process, one model. Times, interleaved: the `kiln.compile` module called directly; the
`torch.compile(backend="kiln")` frame, split into the time before Kiln's runner starts (Dynamo's
guards, its bytecode fetching the lifted weights), inside the runner (the Kiln module) and after
it; and, in a second process, the same frame with a runner that only returns stored outputs
(Dynamo's own cost when the graph does no work). Prints medians in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz import cpu_name  # noqa: E402


def measure(model_name: str, threads: int, calls: int, trivial: bool) -> dict[str, float]:
    import torch

    import kiln
    import kiln.dynamo
    from benchmarks.models import benchmark_models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, inputs = benchmark_models(12)[model_name]()
    model.eval()
    marks: dict[str, float] = {}
    with torch.no_grad():
        stored = model(*inputs)
        direct = kiln.compile(model, inputs, threads=threads, cache=False)

        def backend(gm, example_inputs):
            run = kiln.dynamo.kiln_backend(gm, example_inputs, {"threads": threads, "cache": False})

            def timed(*arguments):
                marks["in"] = time.perf_counter()
                outputs = (stored,) if trivial else run(*arguments)
                marks["out"] = time.perf_counter()
                return outputs

            return timed

        frame = torch.compile(model, backend=backend)
        frame(*inputs)
        samples: dict[str, list[float]] = {"direct": [], "frame": [], "before runner": [], "runner": [], "after runner": []}
        for _ in range(calls):
            start = time.perf_counter()
            direct(*inputs)
            samples["direct"].append(time.perf_counter() - start)
            start = time.perf_counter()
            frame(*inputs)
            end = time.perf_counter()
            samples["frame"].append(end - start)
            samples["before runner"].append(marks["in"] - start)
            samples["runner"].append(marks["out"] - marks["in"])
            samples["after runner"].append(end - marks["out"])
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--trivial", action="store_true", help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args()
    if args.trivial:
        print(json.dumps(measure(args.model, args.threads, args.calls, trivial=True)))
        return
    real = measure(args.model, args.threads, args.calls, trivial=False)
    trivial = json.loads(subprocess.run(
        [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads), "--calls", str(args.calls),
         "--trivial"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    print(f"{args.model}, {args.threads} threads, median of {args.calls} calls, {cpu_name()}")
    for name, ms in real.items():
        print(f"  {name:14s} {ms:7.3f} ms")
    print(f"  a runner that only returns stored outputs: frame {trivial['frame']:.3f} ms, "
          f"before it {trivial['before runner']:.3f} ms")


if __name__ == "__main__":
    main()
