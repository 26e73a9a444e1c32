"""`kiln compile`: an .onnx file (or a bundled model) compiled and saved as a .kiln module or an optimized .onnx."""

from __future__ import annotations

import argparse

from kiln.models.zoo import DEMOS


def compile_command(args: argparse.Namespace) -> int:
    import kiln

    if args.model in DEMOS:
        model, inputs = DEMOS[args.model]()
    else:
        model, inputs = args.model, ()  # an .onnx file: example inputs come from its input shapes
    compiled = kiln.compile(
        model, inputs, target=args.target, opt_level=args.opt_level, debug_dir=args.debug_dir, verbose=True,
        prune=kiln.Prune(ratio=args.prune) if args.prune else kiln.Prune(ratio=args.sparsity, structured=False) if args.sparsity else None,
        low_rank=kiln.LowRank(energy=args.low_rank) if args.low_rank else None, quantize=args.quantize,
    )
    print(compiled.report.table())
    if args.emit == "onnx":
        print(f"\noptimized graph written to {compiled.export_onnx(args.output)}")
    else:
        compiled.save(args.output)
        print(f"\ncompiled module written to {args.output} (kiln.load it)")
    return 0


def add_command(commands) -> None:
    run_compile = commands.add_parser("compile", help="compile an .onnx file (or a bundled model) and save the result")
    run_compile.add_argument("model", help=f"an .onnx file, or one of: {', '.join(sorted(DEMOS))}")
    run_compile.add_argument("-o", "--output", required=True, help="the .kiln artifact, or the .onnx file with --emit onnx")
    run_compile.add_argument("--target", default="llvm")
    run_compile.add_argument("--opt-level", default="O3")
    run_compile.add_argument("--emit", choices=["kiln", "onnx"], default="kiln", help="onnx: the graph after Kiln's passes, for Netron or other runtimes")
    run_compile.add_argument("--debug-dir", default=None, help="write the IR after every pass here")
    compression = run_compile.add_mutually_exclusive_group()
    compression.add_argument("--prune", type=float, default=None, metavar="RATIO", help="structured pruning: remove this fraction of channels and attention heads")
    compression.add_argument("--sparsity", type=float, default=None, metavar="RATIO", help="magnitude pruning: zero this fraction of the weights (smaller artifact)")
    run_compile.add_argument("--low-rank", type=float, default=None, metavar="ENERGY",
                             help="factorize linear/conv layers, keeping this fraction of each weight's energy (e.g. 0.9)")
    run_compile.add_argument("--quantize", choices=["dynamic_int8", "weight_int8", "weight_int4", "fp16", "bf16"], default=None,
                             help="quantization that needs no calibration data (static int8 does: use kiln.compile)")
    run_compile.set_defaults(run=compile_command)
