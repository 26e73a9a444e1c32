"""Backends that turn a Kiln graph into something that runs, and the targets that pick one."""

from __future__ import annotations

from kiln.backends.base import Backend, BackendSteps, BuildContext, Executable, build
from kiln.backends.targets import TARGETS, ResolvedTarget, TargetPreset, resolve_target
from kiln.errors import TargetError


def get_backend(name: str) -> Backend:
    """Backends import lazily: TVM loads only when a TVM target is used."""
    if name == "tvm":
        from kiln.backends.tvm import TVMBackend

        return TVMBackend()
    if name == "onnxruntime":
        from kiln.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "eager":
        from kiln.backends.eager import EagerBackend

        return EagerBackend()
    raise TargetError(f"unknown backend '{name}'")


__all__ = ["TARGETS", "Backend", "BackendSteps", "BuildContext", "Executable", "ResolvedTarget", "TargetPreset", "build", "get_backend", "resolve_target"]
