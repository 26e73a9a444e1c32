"""Kiln vs PyTorch eager, torch.compile (Inductor) and ONNX Runtime: one process, interleaved, medians.

    python benchmarks/run.py                      # all models, all cores
    python benchmarks/run.py --models resnet18 --threads 1

Writes benchmarks/results/latest.md and latest.json, naming the CPU the figures came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def contenders(model, inputs, threads: int, log) -> tuple[dict, dict, dict]:
    """name -> zero-argument runner, compile seconds, max |Δ| vs eager."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import kiln

    runs, compile_seconds, errors = {}, {}, {}
    with torch.no_grad():
        expected = model(*inputs)
    runs["eager"] = lambda: model(*inputs)
    compile_seconds["eager"] = 0.0

    def add(name, build, run_output):
        start = time.perf_counter()
        try:
            runner = build()
            compile_seconds[name] = time.perf_counter() - start
            errors[name] = float((torch.as_tensor(run_output(runner)) - expected).abs().max())
            runs[name] = lambda: run_output(runner)
        except Exception as error:  # a contender that fails is reported, not hidden
            log(f"  {name} failed: {type(error).__name__}: {str(error)[:300]}")
            errors[name] = f"failed: {type(error).__name__}"

    def inductor():
        compiled = torch.compile(model)
        compiled(*inputs)
        return compiled

    add("torch.compile", inductor, lambda f: f(*inputs))

    def onnxruntime():
        path = Path(tempfile.mkdtemp()) / "model.onnx"
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
        return lambda: session.run(None, feeds)[0]

    add("onnxruntime", onnxruntime, lambda f: np.asarray(f()))
    add("kiln", lambda: kiln.compile(model, inputs, target="llvm", threads=threads), lambda m: m(*inputs))
    return runs, compile_seconds, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bert-layers", type=int, default=2)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's runtime starts its pool

    import torch

    from benchmarks.models import benchmark_models
    from kiln.backends.targets import host_cpu
    from kiln.timing import interleaved_medians

    torch.set_num_threads(args.threads)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    zoo = benchmark_models(args.bert_layers)
    names = args.models.split(",") if args.models else list(zoo)
    host = host_cpu()
    results = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_name(), "llvm_cpu": host["mcpu"], "simd": host["simd"],
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "models": {},
    }
    for name in names:
        log(f"{name}: building contenders")
        model, inputs = zoo[name]()
        try:
            runs, compile_seconds, errors = contenders(model, inputs, args.threads, log)
        except Exception:
            log(traceback.format_exc())
            continue
        log(f"{name}: timing {', '.join(runs)}")
        with torch.no_grad():
            medians = interleaved_medians(runs, repeats=args.repeats, warmup=1)
        results["models"][name] = {"median_ms": {k: v * 1000 for k, v in medians.items()}, "compile_s": compile_seconds, "max_abs_error": errors}
        log(f"{name}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in medians.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = [
        f"# Kiln benchmark — {results['date']}",
        "",
        f"CPU: {results['cpu']} (LLVM: {results['llvm_cpu']}; {', '.join(results['simd'])}), {results['threads']} threads, "
        f"batch 1, fp32, median of {results['repeats']} interleaved runs, one process. torch {results['torch']}.",
        "",
        "| model | eager | torch.compile | ONNX Runtime | Kiln | Kiln / ORT | Kiln compile | Kiln max abs err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        ms = r["median_ms"]
        cell = lambda k: f"{ms[k]:.1f} ms" if k in ms else str(r["max_abs_error"].get(k, "n/a"))
        ratio = f"{ms['kiln'] / ms['onnxruntime']:.1f}×" if "kiln" in ms and "onnxruntime" in ms else "n/a"
        lines.append(
            f"| {name} | {cell('eager')} | {cell('torch.compile')} | {cell('onnxruntime')} | {cell('kiln')} | {ratio} | "
            f"{r['compile_s'].get('kiln', float('nan')):.1f} s | {r['max_abs_error'].get('kiln', 'n/a')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
