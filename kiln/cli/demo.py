"""`kiln demo`: compile a bundled model, print the per-pass report and its speed beside eager."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kiln.models.zoo import DEMOS


def demo(args: argparse.Namespace) -> int:
    import kiln
    from kiln.backends.tvm.cpu.host import host_cpu
    from kiln.timing import interleaved_medians

    model, inputs = DEMOS[args.model]()
    print(f"Compiling {args.model} for target '{args.target}' (opt level {args.opt_level})...", flush=True)
    compiled = kiln.compile(model, inputs, target=args.target, opt_level=args.opt_level, debug_dir=args.debug_dir, verbose=True)
    print(compiled.report.table())
    if args.debug_dir:
        print(f"\nIR after every pass, drift table and report: {args.debug_dir}/ (open {Path(args.debug_dir) / 'report.html'})")
    with torch.no_grad():
        expected = model(*inputs)
    error = (compiled(*inputs) - expected).abs().max().item()
    print(f"\nmax |kiln - eager| = {error:.2e}")
    with torch.no_grad():
        medians = interleaved_medians(
            {"eager": lambda: model(*inputs), "kiln": lambda: compiled(*inputs)}, repeats=args.repeats, warmup=1
        )
    cpu = host_cpu()
    print(f"latency on {cpu['mcpu']} ({', '.join(cpu['simd'])}), {torch.get_num_threads()} threads, median of {args.repeats}:")
    print(f"  PyTorch eager {medians['eager'] * 1000:9.2f} ms")
    print(f"  Kiln          {medians['kiln'] * 1000:9.2f} ms   ({medians['eager'] / medians['kiln']:.2f}x eager)")
    return 0


def add_command(commands) -> None:
    run_demo = commands.add_parser("demo", help="compile a bundled model, print the per-pass report and its speed")
    run_demo.add_argument("--model", choices=sorted(DEMOS), default="resnet18")
    run_demo.add_argument("--target", default="llvm")
    run_demo.add_argument("--opt-level", default="O3")
    run_demo.add_argument("--debug-dir", default=None, help="write the IR after every pass here")
    run_demo.add_argument("--repeats", type=int, default=5)
    run_demo.set_defaults(run=demo)
