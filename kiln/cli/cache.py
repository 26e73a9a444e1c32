"""`kiln cache info|clear`: the compile cache's folder, entries and size, or emptied."""

from __future__ import annotations

import argparse


def cache_command(args: argparse.Namespace) -> int:
    """`kiln cache info` / `kiln cache clear`: the compile cache's folder, entries and size."""
    from kiln import background
    from kiln.cache import CompileCache

    background.wait_all()
    cache = CompileCache()
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.root}")
    else:
        print(cache.describe())
    return 0


def add_command(commands) -> None:
    run_cache = commands.add_parser("cache", help="the compile cache: its folder, entries and size (info), or empty it (clear)")
    run_cache.add_argument("action", choices=["info", "clear"], nargs="?", default="info")
    run_cache.set_defaults(run=cache_command)
