"""Kiln vs PyTorch eager, torch.compile (Inductor), ONNX Runtime and OpenVINO: one process, interleaved, medians.

    python benchmarks/run.py                          # all models, 1 thread and all cores
    python benchmarks/run.py --models resnet18 --threads 1

Kiln is measured untuned (an empty tuning database) and, where `kiln tune` left records for this
CPU, tuned. Writes benchmarks/results/latest.md and latest.json, naming the CPU the figures came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_description() -> tuple[str, float]:
    """Model name and clock (GHz) from /proc/cpuinfo."""
    name, mhz = platform.processor() or "unknown CPU", 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    return name, mhz / 1000


def use_threads(threads: int) -> None:
    """Every runtime of a side-by-side script on `threads` threads (before TVM starts its pool)."""
    import torch

    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


# cores whose FMA pipes are narrower than their widest vectors: Zen 4 runs a 512-bit FMA as two
# 256-bit halves
FMA_DATAPATH_BITS = {"znver4": 256}


def fp32_peak_gflops(vector_bits: int, ghz: float, cores: int, llvm_cpu: str = "") -> float:
    """Two FMA pipes per core, each lanes × 2 FLOP per cycle, at the nominal clock (an estimate:
    cores boost above it)."""
    bits = min(vector_bits, FMA_DATAPATH_BITS.get(llvm_cpu, vector_bits))
    return cores * 2 * (bits // 32) * 2 * ghz


def openvino_runner(onnx_path: Path, feeds: dict, threads: int, precision: str | None):
    """(run, precision it ran in) of OpenVINO's CPU plugin on the ONNX file: `precision` "f32"
    forces fp32; None keeps OpenVINO's default (bf16 on CPUs with AMX, f32 elsewhere)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    request = compiled.create_infer_request()

    def run():
        request.infer(feeds)
        return request.get_output_tensor(0).data.copy()

    return run, str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def openvino_default_precision() -> str:
    """The precision OpenVINO's CPU plugin runs in when not told (bf16 on AMX CPUs)."""
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def onnx_input_names(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [value.name for value in graph.input if value.name not in initializers]


def _scheduled(note: str) -> int:
    """Functions a report row says are scheduled ("19 TIR functions (7 scheduled), ...")."""
    found = re.search(r"\((\d+) scheduled\)", note)
    return int(found.group(1)) if found else 0


def build_contenders(model, inputs, threads: list[int], empty_tuning_dir: str, log) -> tuple[dict, dict, dict]:
    """name -> runner, compile seconds, max |Δ| vs eager. ORT and Kiln get one build per thread count."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import kiln

    with torch.no_grad():
        expected = model(*inputs)
    runs, seconds, errors = {"eager": lambda: model(*inputs)}, {"eager": 0.0}, {}

    def add(name, build, call):
        start = time.perf_counter()
        try:
            runner = build()
            seconds[name] = time.perf_counter() - start
            with torch.no_grad():
                errors[name] = float((torch.as_tensor(np.asarray(call(runner))) - expected).abs().max())
            runs[name] = lambda: call(runner)
        except Exception as error:  # a contender that fails is reported, not hidden
            log(f"  {name} failed: {type(error).__name__}: {str(error)[:300]}")
            errors[name] = f"failed: {type(error).__name__}"

    def inductor():
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(*inputs)
        return compiled

    add("torch.compile", inductor, lambda f: f(*inputs))
    onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, inputs, str(onnx_path), dynamo=False, opset_version=17)
    for count in threads:

        def onnxruntime(count=count):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = count
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
            return lambda: session.run(None, feeds)[0]

        add(f"onnxruntime@{count}", onnxruntime, lambda f: f())
        feeds = {name: x.numpy() for name, x in zip(onnx_input_names(onnx_path), inputs)}
        for label, precision in (("openvino", "f32"), ("openvino default", None)):
            add(f"{label}@{count}", lambda count=count, precision=precision: openvino_runner(onnx_path, feeds, count, precision)[0],
                lambda f: f())
        add(f"kiln@{count}", lambda count=count: kiln.compile(model, inputs, threads=count, tuning_dir=empty_tuning_dir), lambda m: m(*inputs))
        tuned = kiln.compile(model, inputs, threads=count)
        if any(r.name == "ApplyTuningDatabase" and _scheduled(r.note) for r in tuned.report.rows):
            add(f"kiln tuned@{count}", lambda tuned=tuned: tuned, lambda m: m(*inputs))
    return runs, seconds, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bert-layers", type=int, default=12)
    args = parser.parse_args()

    import torch

    from benchmarks.models import benchmark_models
    from kiln.backends.tvm.cpu.host import host_cpu
    from kiln.backends.tvm.runtime.threads import size_thread_pool, usable_cores
    from kiln.timing import interleaved_medians

    size_thread_pool()
    cores = usable_cores()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    log = lambda message: print(message, file=sys.stderr, flush=True)
    zoo = benchmark_models(args.bert_layers)
    names = args.models.split(",") if args.models else list(zoo)
    host = host_cpu()
    cpu, ghz = cpu_description()
    results = {
        "date": datetime.date.today().isoformat(), "cpu": cpu, "ghz": ghz, "llvm_cpu": host["mcpu"], "simd": host["simd"],
        "openvino_default_precision": openvino_default_precision(),
        "cores": cores, "fp32_peak_gflops_per_core": fp32_peak_gflops(host["vector_bits"], ghz, 1, host["mcpu"]),
        "repeats": args.repeats, "torch": torch.__version__, "models": {},
    }
    empty_tuning_dir = tempfile.mkdtemp()
    for name in names:
        log(f"{name}: building contenders")
        model, inputs = zoo[name]()
        try:
            runs, seconds, errors = build_contenders(model, inputs, threads, empty_tuning_dir, log)
        except Exception:
            log(traceback.format_exc())
            continue
        from kiln.ir.torch_frontend import from_torch

        flops = from_torch(model, inputs).stats().flops
        entry = {"flops": flops, "compile_s": seconds, "max_abs_error": errors, "median_ms": {}}
        for count in threads:
            torch.set_num_threads(count)
            shared = {k: v for k, v in runs.items() if "@" not in k}
            mine = {k: v for k, v in runs.items() if k.endswith(f"@{count}")}
            log(f"{name} @ {count} threads: timing {', '.join([*shared, *mine])}")
            with torch.no_grad():
                medians = interleaved_medians({**shared, **mine}, repeats=args.repeats, warmup=1)
            entry["median_ms"][str(count)] = {k.split("@")[0]: v * 1000 for k, v in medians.items()}
            log("  " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in medians.items()))
        results["models"][name] = entry
    RESULTS.mkdir(exist_ok=True)
    results = merge_with_latest(results)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def merge_with_latest(results: dict) -> dict:
    """A run of some models updates theirs in latest.json and keeps the others measured on the
    same CPU, so the file always holds the newest figure of every model."""
    path = RESULTS / "latest.json"
    if not path.is_file():
        return results
    previous = json.loads(path.read_text())
    if (previous.get("cpu"), previous.get("llvm_cpu"), previous.get("cores")) != (results["cpu"], results["llvm_cpu"], results["cores"]):
        return results
    return {**results, "models": {**previous["models"], **results["models"]}}


def markdown(results: dict) -> str:
    peak = results["fp32_peak_gflops_per_core"]
    lines = [
        f"# Kiln benchmark — {results['date']}",
        "",
        f"CPU: {results['cpu']} (LLVM: {results['llvm_cpu']}; {', '.join(results['simd'])}), {results['cores']} cores "
        f"at {results['ghz']:.2f} GHz, fp32 peak ≈ {peak:.0f} GFLOP/s per core (2 FMA × lanes of the FMA datapath × 2 × nominal clock; cores boost above it). "
        f"Batch 1, fp32, median of {results['repeats']} interleaved turns, one process; torch {results['torch']}.",
        "",
        f"OpenVINO: fp32 (`INFERENCE_PRECISION_HINT=f32`) and its default precision on this CPU "
        f"({results.get('openvino_default_precision', '?')}). Kiln / best fp32: Kiln over the faster of ONNX Runtime and OpenVINO fp32.",
        "",
        "| model | threads | eager | torch.compile | ONNX Runtime | OpenVINO fp32 | OpenVINO default | Kiln | Kiln tuned "
        "| Kiln / ORT | Kiln / best fp32 | Kiln / Inductor | Kiln GFLOP/s (peak) | Kiln compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        for count, ms in r["median_ms"].items():
            cell = lambda k: f"{ms[k]:.1f} ms" if k in ms else "—"
            best = min(v for k, v in ms.items() if k.startswith("kiln"))
            ratio = lambda other: f"{best / ms[other]:.2f}×" if other in ms else "—"
            fp32 = [ms[k] for k in ("onnxruntime", "openvino") if k in ms]
            lines.append(
                f"| {name} | {count} | {cell('eager')} | {cell('torch.compile')} | {cell('onnxruntime')} | {cell('openvino')} | "
                f"{cell('openvino default')} | {cell('kiln')} | {cell('kiln tuned')} | {ratio('onnxruntime')} | "
                f"{f'{best / min(fp32):.2f}×' if fp32 else '—'} | {ratio('torch.compile')} | "
                f"{r['flops'] / best / 1e6:.0f} ({peak * int(count):.0f}) | {r['compile_s'].get(f'kiln@{count}', float('nan')):.1f} s |"
            )
    lines += ["", "Ratios use the faster of Kiln untuned and tuned; below 1.00× Kiln is faster.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
