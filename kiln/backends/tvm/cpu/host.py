"""This machine's CPU as Kiln compiles for it: what `kiln targets` and the benchmarks print."""

from __future__ import annotations

from typing import Any

from tvm.target import Target, codegen

from kiln.backends.targets import host_llvm_target
from kiln.backends.tvm.cpu.register_tile import vector_lanes


def host_cpu() -> dict[str, Any]:
    """The host as Kiln compiles for it: CPU name, feature corrections, the SIMD features, the widest vector."""
    described = host_llvm_target()
    target = Target(described)
    features = codegen.llvm_get_cpu_features(target)
    simd = [f for f in ("avx512f", "avx512bw", "avx512vnni", "avx512bf16", "amx-tile", "avx2", "fma", "avx", "neon", "sve") if f in features]
    return {"mcpu": described["mcpu"], "mattr": described.get("mattr", []), "simd": simd, "vector_bits": 32 * vector_lanes(target)}
