"""Structured pruning: Kiln's prune_channels vs Torch-Pruning (DepGraph) + ONNX Runtime, same
models, same channel ratios, one process, interleaved medians.

    pip install --no-deps torch-pruning      # (the bench extra installs it)
    python benchmarks/pruning.py [--threads 1] [--ratios 0.3 0.5]
    # writes benchmarks/results/pruning.md

Per model and ratio: Kiln (llvm) pruned vs Kiln unpruned, and Torch-Pruning's MagnitudePruner
(L1, the final classifier ignored, no round_to: its default) exported to ONNX and run in ONNX
Runtime (ORT_ENABLE_ALL) vs ONNX Runtime unpruned. Speedup = unpruned latency / pruned latency,
each against its own runtime's unpruned model. Parameters and FLOPs are Kiln's counts of each IR.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.run import cpu_description, use_threads  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "pruning.md"


def torch_pruning(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[classifier])
    pruner.step()
    return model.eval()


def ort_runner(model: torch.nn.Module, x: torch.Tensor, path: Path, threads: int):
    import onnxruntime as ort

    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"x": x.numpy()}
    return lambda: session.run(None, feeds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    use_threads(args.threads)
    import kiln
    from kiln import models
    from kiln.ir import from_torch
    from kiln.timing import interleaved_medians

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    cpu, _ = cpu_description()
    lines = [
        "# Structured pruning: Kiln vs Torch-Pruning + ONNX Runtime", "",
        f"{cpu}, {args.threads} thread(s), batch 1, 224×224, one process, interleaved medians of {args.repeats} turns. "
        f"`python benchmarks/pruning.py --threads {args.threads}`. Speedup: each runtime's unpruned latency over its pruned latency.", "",
        "| model | ratio | Kiln params | Kiln GFLOP | Kiln ms | Kiln speedup | TP params | TP GFLOP | TP + ORT ms | TP + ORT speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, build in (("ResNet-18", models.resnet18), ("MobileNetV2", models.mobilenet_v2)):
        model, x = build().eval(), torch.randn(1, 3, 224, 224)
        print(f"[{name}] compiling unpruned and pruned models", flush=True)
        runs, sizes = {}, {}
        unpruned = kiln.compile(model, (x,), threads=args.threads)
        runs["kiln 0"], sizes["kiln 0"] = (lambda c=unpruned: c(x)), unpruned.graph.stats()
        runs["tp 0"], sizes["tp 0"] = ort_runner(model, x, work / f"{name}.onnx", args.threads), from_torch(model, (x,)).stats()
        for ratio in args.ratios:
            pruned = kiln.compile(model, (x,), threads=args.threads, prune=kiln.Prune(ratio=ratio))
            runs[f"kiln {ratio}"], sizes[f"kiln {ratio}"] = (lambda c=pruned: c(x)), pruned.graph.stats()
            theirs = torch_pruning(model, x, ratio)
            runs[f"tp {ratio}"] = ort_runner(theirs, x, work / f"{name}_{ratio}.onnx", args.threads)
            sizes[f"tp {ratio}"] = from_torch(theirs, (x,)).stats()
        print(f"[{name}] timing {len(runs)} contenders", flush=True)
        medians = interleaved_medians(runs, repeats=args.repeats)
        for ratio in [0] + args.ratios:
            kiln_key, tp_key = f"kiln {ratio}", f"tp {ratio}"
            lines.append(
                f"| {name} | {ratio or 'unpruned'} | {sizes[kiln_key].params / 1e6:.2f} M | {sizes[kiln_key].flops / 1e9:.2f} "
                f"| {1e3 * medians[kiln_key]:.2f} | {medians['kiln 0'] / medians[kiln_key]:.2f}× "
                f"| {sizes[tp_key].params / 1e6:.2f} M | {sizes[tp_key].flops / 1e9:.2f} | {1e3 * medians[tp_key]:.2f} "
                f"| {medians['tp 0'] / medians[tp_key]:.2f}× |"
            )
        print("\n".join(lines[-len(args.ratios) - 1:]), flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
