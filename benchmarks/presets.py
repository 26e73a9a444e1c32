"""Builds the benchmarks' ResNet-18 for every TVM target preset on this machine and says what each
library is (`file`) and which code it holds (CUDA kernels for the GPU presets).

    python benchmarks/presets.py        # writes benchmarks/results/presets.md
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import torch

import kiln
from kiln.backends.targets import TARGETS
from kiln.backends.tvm.cpu.host import host_cpu
from kiln.models import resnet18

RESULTS = Path(__file__).parent / "results" / "presets.md"


def main() -> None:
    model, x = resnet18().eval(), torch.randn(1, 3, 224, 224)
    rows = ["| preset | build s | library | `file` says | modules |", "|---|---|---|---|---|"]
    for name, preset in TARGETS.items():
        if preset.backend != "tvm":
            continue
        start = time.perf_counter()
        compiled = kiln.compile(model, (x,), target=name)
        library = compiled.export(Path(tempfile.mkdtemp()) / name) / "module.so"
        seconds = time.perf_counter() - start
        described = ",".join(subprocess.run(["file", "-b", str(library)], capture_output=True, text=True).stdout.split(",")[:2])
        rows.append(f"| {name} | {seconds:.1f} | {library.stat().st_size / 1e6:.1f} MB | {described} | {', '.join(sorted(compiled.executable.module_kinds()))} |")
        print(rows[-1], flush=True)
    cpu = host_cpu()
    header = f"# ResNet-18 built for every preset\n\nBuilt on {cpu['mcpu']} ({', '.join(cpu['simd'])}).\n\n"
    RESULTS.write_text(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
