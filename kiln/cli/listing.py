"""`kiln passes` and `kiln targets`: what Kiln has registered."""

from __future__ import annotations

import argparse


def passes(_: argparse.Namespace) -> int:
    from kiln.passes import PASSES, PIPELINES

    width = max(map(len, PASSES))
    for name, registered in sorted(PASSES.items()):
        options = ", ".join(f"{k}={v!r}" for k, v in registered.options.items())
        print(f"{name.ljust(width)}  {registered.description}{f'  [options: {options}]' if options else ''}")
    print("\npipelines:")
    for level, pipeline in PIPELINES.items():
        print(f"  {level}: {' -> '.join(p if isinstance(p, str) else p[0] for p in pipeline) or '(no graph passes)'}")
    return 0


def targets(_: argparse.Namespace) -> int:
    from kiln.backends.targets import TARGETS, resolve_target

    width = max(map(len, TARGETS))
    for name, preset in TARGETS.items():
        print(f"{name.ljust(width)}  [{preset.backend}] {preset.description}")
        resolved = resolve_target(name)
        if resolved.tvm_target:
            print(f"{''.ljust(width)}  target: {resolved.tvm_target}")
        toolchain = resolved.toolchain
        if toolchain is not None:
            status = "installed" if toolchain.installed() else f"NOT installed: apt-get install {toolchain.package}"
            print(f"{''.ljust(width)}  cross toolchain: {toolchain.compiler} ({status})")
    return 0


def add_command(commands) -> None:
    commands.add_parser("passes", help="list registered passes and pipelines").set_defaults(run=passes)
    commands.add_parser("targets", help="list target presets").set_defaults(run=targets)
