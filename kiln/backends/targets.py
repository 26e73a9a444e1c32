"""Targets: preset names users type, resolved to a backend and (for TVM) a target dict.

Presets are data. The host CPU is detected when a target is resolved, never hard-coded: these
machines change CPU between runs (AVX2-only EPYC one day, AVX-512 Xeon the next).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from kiln.errors import TargetError


def host_cpu() -> dict[str, Any]:
    """The host as LLVM sees it: CPU name, the SIMD features it implies, and the widest vector."""
    from tvm.target import Target, codegen

    from kiln.backends.tvm.schedules import vector_lanes

    mcpu = codegen.llvm_get_system_cpu()
    target = Target({"kind": "llvm", "mcpu": mcpu})
    features = codegen.llvm_get_cpu_features(target)
    simd = [f for f in ("avx512f", "avx512bw", "avx512vnni", "amx-tile", "avx2", "fma", "avx", "neon", "sve") if f in features]
    return {"mcpu": mcpu, "simd": simd, "vector_bits": 32 * vector_lanes(target)}


def host_llvm_target() -> dict[str, Any]:
    return {"kind": "llvm", "mcpu": host_cpu()["mcpu"], "num-cores": os.cpu_count() or 1}


@dataclass(frozen=True)
class TargetPreset:
    name: str
    backend: str  # "tvm" or "eager"
    description: str
    make_target: Callable[[], dict[str, Any]] = field(default=lambda: {})


TARGETS: dict[str, TargetPreset] = {
    preset.name: preset
    for preset in (
        TargetPreset("llvm", "tvm", "this machine's CPU through TVM/LLVM (CPU name and features detected)", host_llvm_target),
        TargetPreset("cpu", "tvm", "alias of llvm", host_llvm_target),
        TargetPreset("eager", "eager", "the optimized graph run by PyTorch: the numerical reference"),
    )
}


@dataclass(frozen=True)
class ResolvedTarget:
    name: str
    backend: str
    tvm_target: dict[str, Any]

    def describe(self) -> str:
        return f"{self.name} ({self.backend}{': ' + str(self.tvm_target) if self.tvm_target else ''})"


def resolve_target(target: str | dict[str, Any]) -> ResolvedTarget:
    """A preset name, or a TVM target as a JSON dict (TVM's CLI-style strings are rejected)."""
    if isinstance(target, dict):
        if "kind" not in target:
            raise TargetError(f"a target dict needs a 'kind' (e.g. {{'kind': 'llvm'}}), got {target}")
        return ResolvedTarget(target["kind"], "tvm", dict(target))
    if not isinstance(target, str) or target not in TARGETS:
        hint = " (targets are preset names or TVM target dicts, not TVM command-line strings)" if isinstance(target, str) and " " in target else ""
        raise TargetError(f"unknown target {target!r}{hint}; presets: {', '.join(TARGETS)}")
    preset = TARGETS[target]
    return ResolvedTarget(preset.name, preset.backend, preset.make_target())
