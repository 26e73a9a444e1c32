"""`CompiledModule.export`: a folder to copy to the board and run there with only TVM's runtime.

    module.so          the model's program (kernels, VM bytecode), linked for the target's CPU
    weights.bin        its weights, the program's trailing parameters, indexed by weights.json
    kiln_bundle.json   target, device, input and output names, shapes and dtypes, the files' SHA-256
    run.py             a minimal runner (bundle_runner.py), numpy + tvm runtime only

The runner checks the library's name and checksum before it maps it, and the weights' before it
reads them: a file corrupted on the way, or swapped beside the manifest, is refused, not run. The checksum is no proof of who built
it (whoever edits the manifest can edit it too): ship the signed `.kiln` and `kiln verify` it for that.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from kiln.backends.tvm.runtime import bundle_runner
from kiln.backends.tvm.runtime.executable import LIBRARY_FILE, TVMExecutable
from kiln.errors import ArtifactError
from kiln.signature import Signature

MANIFEST_FILE = "kiln_bundle.json"
RUNNER_FILE = "run.py"


def refuse_unwritable(path: Path) -> None:
    """A bundle writes plain files: a symlink there would redirect the write, a folder block it."""
    if path.is_symlink() or path.is_dir():
        raise ArtifactError(f"{path} is a {'symlink' if path.is_symlink() else 'folder'}: "
                            f"the bundle writes a file there; refused (export to a fresh folder)")


def export_bundle(executable: TVMExecutable, signature: Signature, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (LIBRARY_FILE, MANIFEST_FILE, RUNNER_FILE, *bundle_runner.weight_files()):
        refuse_unwritable(folder / name)
    executable.write_shared_library(folder / LIBRARY_FILE)
    executable.write_weights(folder)
    target = executable.target
    manifest: dict[str, Any] = {
        "library": LIBRARY_FILE,
        "library_sha256": hashlib.sha256((folder / LIBRARY_FILE).read_bytes()).hexdigest(),
        "weights": bundle_runner.WEIGHTS_STEM if executable.weights else None,
        "weights_sha256": bundle_runner.weights_sha256(folder) if executable.weights else None,
        "target": target.name,
        "tvm_target": target.tvm_target,
        "device": target.device,
        "architecture": target.architecture,
        "cpu_features": target.cpu_features,  # the runner asks Linux for AMX state where they include it
        "inputs": [spec.to_json() for spec in signature.inputs],
        "outputs": [spec.to_json() for spec in signature.outputs],
        # the program's last output reports its indices: run.py checks and drops it (kiln/backends/tvm/index_guard.py)
        "index_checks": [check.to_json() for check in executable.index_checks],
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    shutil.copyfile(bundle_runner.__file__, folder / RUNNER_FILE)
    return folder
