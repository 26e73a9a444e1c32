"""The `kiln` command line, one module per command (or family of commands): each adds its own
parser, with its arguments beside its handler.

    demo      compile a bundled model, print the per-pass report and its speed
    compile   an .onnx file (or a bundled model) to a .kiln module or an optimized .onnx
    generate  token ids from a decoder LM
    tune      tune a bundled model's kernels on this machine
    report    a debug directory's report.html
    keygen, sign, verify, info   signing artifacts, and what they record
    cache     the compile cache
    passes, targets   what Kiln has registered
"""

from __future__ import annotations

import argparse
import sys

from kiln.cli import artifacts, cache, compile, demo, generate, listing, report, tune
from kiln.errors import KilnError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln deep-learning model compiler")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (demo, tune, compile, generate, artifacts, cache, report, listing):
        command.add_command(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KilnError as error:
        print(f"kiln: error: {error}", file=sys.stderr)
        return 1
