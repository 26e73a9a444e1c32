"""`CompiledModule.export`: a folder to copy to the board and run there with only TVM's runtime.

    module.so          the model (kernels, VM bytecode and weights), linked for the target's CPU
    kiln_bundle.json   target, device, input and output names, shapes and dtypes
    run.py             a minimal runner (bundle_runner.py), numpy + tvm runtime only
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kiln.backends.tvm import bundle_runner
from kiln.backends.tvm.executable import LIBRARY_FILE, TVMExecutable
from kiln.signature import Signature

MANIFEST_FILE = "kiln_bundle.json"
RUNNER_FILE = "run.py"


def export_bundle(executable: TVMExecutable, signature: Signature, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    executable.write_shared_library(folder / LIBRARY_FILE)
    target = executable.target
    manifest: dict[str, Any] = {
        "library": LIBRARY_FILE,
        "target": target.name,
        "tvm_target": target.tvm_target,
        "device": target.device,
        "architecture": target.architecture,
        "inputs": [spec.to_json() for spec in signature.inputs],
        "outputs": [spec.to_json() for spec in signature.outputs],
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    shutil.copyfile(bundle_runner.__file__, folder / RUNNER_FILE)
    return folder
