"""CompiledModule: what `kiln.compile` returns and `kiln.load` restores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kiln import artifact
from kiln.backends import Executable, ResolvedTarget, get_backend
from kiln.passes.instrument import Report
from kiln.signature import Signature


class CompiledModule:
    """Call it like the original model: torch tensors (or numpy arrays) in, torch tensors out."""

    def __init__(
        self, executable: Executable, signature: Signature, target: ResolvedTarget, report: Report, threads: int | None = None
    ) -> None:
        self.executable = executable
        self.threads = threads
        self.signature = signature
        self.target = target
        self.report = report

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inputs = self.signature.flatten(args, kwargs)
        return self.signature.unflatten(self.executable(inputs))

    def save(self, path: str | Path) -> None:
        manifest = {
            "backend": self.target.backend,
            "target": {"name": self.target.name, "tvm": self.target.tvm_target},
            "signature": self.signature.to_json(),
            "threads": self.threads,
            "report": self.report.to_json(),
        }
        artifact.write_artifact(path, manifest, self.executable.save)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.signature.inputs)
        return f"<kiln.CompiledModule {self.target.name} ({ins})>"


def load(path: str | Path) -> CompiledModule:
    """Restore a module saved with `CompiledModule.save`, in any process."""

    def restore(manifest: dict[str, Any], folder: Path) -> CompiledModule:
        target = ResolvedTarget(manifest["target"]["name"], manifest["backend"], manifest["target"]["tvm"])
        threads = manifest.get("threads")
        executable = get_backend(manifest["backend"]).load(folder, target, threads)
        report = Report.from_json(manifest["report"])
        return CompiledModule(executable, Signature.from_json(manifest["signature"]), target, report, threads)

    return artifact.read_artifact(path, restore)
