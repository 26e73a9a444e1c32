"""The README's picture of the HTML report, and how long the page takes to render.

    python benchmarks/report_screenshot.py [--out docs/report_resnet18_fold_batch_norm.png]

Compiles `kiln demo`'s ResNet-18 with a debug directory, opens its report.html in headless
Chromium at the fold_batch_norm diff and saves a screenshot; then renders the page five times
and prints the time from navigation start to every view built (the page records it in
`data-render-ms`), with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz import cpu_name  # noqa: E402


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report_resnet18_fold_batch_norm.png")
    args = parser.parse_args()

    import kiln
    from kiln.cli import _demo_models
    from kiln.report import write_report

    model, inputs = _demo_models()["resnet18"]()
    with tempfile.TemporaryDirectory(prefix="kiln-report-") as folder:
        compiled = kiln.compile(model, inputs, debug_dir=folder, cache=False)
        write_report(folder, title="kiln demo: ResNet-18")
        fold = next(row.index for row in compiled.report.rows if row.name == "fold_batch_norm")
        page = f"file://{Path(folder) / 'report.html'}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,760",
                        "--virtual-time-budget=5000", f"--screenshot={args.out}", f"{page}#diff={fold}&focus=diff&zoom=4"],
                       check=True, capture_output=True, timeout=120)
        render_ms = []
        for _ in range(5):
            dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page],
                                 check=True, capture_output=True, text=True, timeout=120).stdout
            render_ms.append(float(re.search(r'data-render-ms="(\d+)"', dom)[1]))
        size = (Path(folder) / "report.html").stat().st_size
    print(f"screenshot: {args.out}")
    print(f"ResNet-18 report ({size / 1e6:.2f} MB): rendered in {statistics.median(render_ms):.0f} ms "
          f"(median of 5, headless Chromium, {cpu_name()})")


if __name__ == "__main__":
    main()
