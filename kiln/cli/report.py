"""`kiln report DIR`: a debug directory's report.html (graphs, drift, profile), written again."""

from __future__ import annotations

import argparse


def report_command(args: argparse.Namespace) -> int:
    """`kiln report DIR`: (re)write the debug directory's report.html and print its path."""
    from kiln.report import write_report

    print(write_report(args.folder, tolerance=args.tolerance))
    return 0


def add_command(commands) -> None:
    run_report = commands.add_parser("report", help="write a debug directory's report.html (graphs, drift, profile) and print its path")
    run_report.add_argument("folder", help="a debug directory (kiln.compile(..., debug_dir=...) or kiln demo --debug-dir)")
    run_report.add_argument("--tolerance", type=float, default=1e-4, help="the drift plot's tolerance line (relative)")
    run_report.set_defaults(run=report_command)
