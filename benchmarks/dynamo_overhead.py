"""Where `torch.compile(model, backend="kiln")` spends the time a direct `kiln.compile` module does not.

    python benchmarks/dynamo_overhead.py [--model mobilenet_v2] [--threads 2] [--calls 300]

One process per variant, one model. Times, interleaved with calls of the `kiln.compile` module:
the `torch.compile(backend="kiln")` frame, split into the time before Kiln's runner starts
(Dynamo's guards, its bytecode fetching the lifted weights), inside the runner (the Kiln module)
and after it. Variants: as users call it; with a runner that only returns stored outputs
(Dynamo's own cost when the graph does no work); the same with a 64 MB memory sweep in place of
the direct module's call (no TVM in the process: does any cache-evicting work between frames
cost Dynamo the same?); as users call it with `guard_filter_fn=skip_guard_on_all_nn_modules_unsafe`
(PyTorch's own switch for fewer guards); as users call it with Dynamo's
`use_recursive_dict_tags_for_guards` (an nn-module subtree whose dicts kept their version tags
skips its guards; off by default in PyTorch: before Python 3.12 it reads the tags through raw
pointers to dicts that may have been freed). Prints medians in ms.
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


VARIANTS = {  # name: (runner, between frames, guard filter, recursive dict tags)
    "as users call it": ("kiln", "kiln module", False, False),
    "runner returns stored outputs": ("stored", "kiln module", False, False),
    "  ...and a memory sweep between frames, no TVM": ("stored", "memory sweep", False, False),
    "as users call it, nn-module guards skipped": ("kiln", "kiln module", True, False),
    "as users call it, recursive dict tags": ("kiln", "kiln module", False, True),
}


def measure(model_name: str, threads: int, calls: int, variant: str) -> dict[str, float]:
    import numpy as np
    import torch

    import kiln
    import kiln.dynamo
    from benchmarks.models import benchmark_models

    runner, between, guard_filter, dict_tags = VARIANTS[variant]
    torch._dynamo.config.use_recursive_dict_tags_for_guards = dict_tags
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, inputs = benchmark_models(12)[model_name]()
    model.eval()
    marks: dict[str, float] = {}
    with torch.no_grad():
        stored = model(*inputs)
        direct = kiln.compile(model, inputs, threads=threads, cache=False) if between == "kiln module" else None
        sweep = np.ones((64 << 20) // 8)

        def backend(gm, example_inputs):
            run = kiln.dynamo.kiln_backend(gm, example_inputs, {"threads": threads, "cache": False})

            def timed(*arguments):
                marks["in"] = time.perf_counter()
                outputs = (stored,) if runner == "stored" else run(*arguments)
                marks["out"] = time.perf_counter()
                return outputs

            return timed

        options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe} if guard_filter else None
        frame = torch.compile(model, backend=backend, options=options)
        frame(*inputs)
        samples: dict[str, list[float]] = {"between": [], "frame": [], "before runner": [], "runner": [], "after runner": []}
        for _ in range(calls):
            start = time.perf_counter()
            if direct is not None:
                direct(*inputs)
            else:
                sweep += 1.0
            samples["between"].append(time.perf_counter() - start)
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
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one process per variant
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.model, args.threads, args.calls, args.variant)))
        return
    print(f"{args.model}, {args.threads} threads, median of {args.calls} calls, {cpu_name()}")
    print(f"  {'variant':48s} {'between':>8s} {'frame':>8s} {'before':>8s} {'runner':>8s} {'after':>8s}  (ms)")
    for variant in VARIANTS:
        run = subprocess.run([sys.executable, __file__, "--model", args.model, "--threads", str(args.threads),
                              "--calls", str(args.calls), "--variant", variant], capture_output=True, text=True, check=True)
        ms = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {variant:48s} " + " ".join(f"{ms[name]:8.3f}" for name in ("between", "frame", "before runner", "runner", "after runner")),
              flush=True)


if __name__ == "__main__":
    main()
