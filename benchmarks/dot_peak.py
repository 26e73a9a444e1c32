"""This core's peak rate for the instructions Kiln's kernels are built on: fp32 FMA and the int8
dot products, so that a kernel's GMAC/s can be read as a fraction of what the core can do.

    python benchmarks/dot_peak.py

Each probe is kiln/backends/tvm/runtime/peak.py's loop of independent accumulator chains, built by
TVM for this CPU and timed by TVM's evaluator; multiply-adds per second = instructions × lanes ×
steps per lane. Only instructions this CPU has are measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tvm
from tvm.script import tirx as T

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.run import cpu_description  # noqa: E402
from kiln.backends.targets import host_features, resolve_target  # noqa: E402
from kiln.backends.tvm.cpu.host import host_cpu  # noqa: E402
from kiln.backends.tvm.runtime.peak import instructions_per_second, vector_probe  # noqa: E402

ITERATIONS = 2_000_000


def _tile_probe(intrinsic: str):
    """AMX: four accumulator tiles (tmm0-3) updated ITERATIONS times from two operand tiles that
    stay loaded (tmm4, tmm6): the unit's own rate, without the tile loads a kernel adds."""

    @T.prim_func(s_tir=True)
    def probe(seed: T.Buffer((1024,), "uint8"), out: T.Buffer((1024,), "uint8")):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        config = T.alloc_buffer((64,), "uint8", scope="local")
        for i in range(64):
            config[i] = T.uint8(0)
        config[0] = T.uint8(1)
        for tile in range(8):  # 16 rows of 64 bytes each
            config[16 + 2 * tile] = T.uint8(64)
            config[48 + tile] = T.uint8(16)
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", config.access_ptr("r")))
        for tile in T.unroll(8):
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("int8", tile), seed.access_ptr("r"), T.int64(64)))
        for _ in range(ITERATIONS):
            for tile in T.unroll(4):
                T.evaluate(T.call_llvm_intrin("void", intrinsic, T.Cast("int8", tile), T.int8(4), T.int8(6)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(0), out.access_ptr("w"), T.int64(64)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))

    return probe


# (name, LLVM intrinsic, accumulator, operand vector, lanes, multiply-adds per lane, needed features)
PROBES = [
    ("fp32 FMA (AVX-512)", "llvm.fma.v16f32", "float32", "float32x16", 16, 1, {"avx512f"}),
    ("fp32 FMA (AVX2)", "llvm.fma.v8f32", "float32", "float32x8", 8, 1, {"avx2", "fma"}),
    ("vpdpbusd (AVX-512 VNNI)", "llvm.x86.avx512.vpdpbusd.512", "int32", "int8x64", 16, 4, {"avx512vnni"}),
]
# (name, LLVM intrinsic, multiply-adds per instruction: 16 × 16 outputs × 64 int8 or 32 bf16 steps, needed features)
TILE_PROBES = [
    ("tdpbusd (AMX-INT8)", "llvm.x86.tdpbusd", 16 * 16 * 64, {"amx-tile", "amx-int8"}),
    ("tdpbf16ps (AMX-BF16)", "llvm.x86.tdpbf16ps", 16 * 16 * 32, {"amx-tile", "amx-bf16"}),
]


def main() -> None:
    target = tvm.target.Target(resolve_target("llvm").tvm_target)
    features = host_features()
    cpu, clock_ghz = cpu_description()
    lines = [f"# Instruction peaks, one core\n\n{cpu} (LLVM: {host_cpu()['mcpu']}; extensions: {', '.join(sorted(features))}). "
             "`python benchmarks/dot_peak.py`.\n",
             "| instruction | G instructions/s | G multiply-adds/s |", "|---|---|---|"]
    for name, intrinsic, accumulator, operand, lanes, steps, needs in PROBES:
        if not needs <= features:
            continue
        probe = vector_probe(intrinsic, accumulator, operand, lanes, ITERATIONS)
        instructions = instructions_per_second(probe, target, accumulator, lanes, ITERATIONS)
        lines.append(f"| {name} | {instructions / 1e9:.2f} | {instructions * lanes * steps / 1e9:.0f} |")
        print(lines[-1], flush=True)
    for name, intrinsic, multiply_adds, needs in TILE_PROBES:
        if not needs <= features:
            continue
        from kiln.backends.tvm.runtime.bundle_runner import request_amx_state

        request_amx_state()
        library = tvm.tirx.build(tvm.IRModule({"probe": _tile_probe(intrinsic)}), target=target)
        device = tvm.cpu()
        seed = tvm.runtime.tensor(np.ones(1024, "uint8"), device)
        out = tvm.runtime.tensor(np.zeros(1024, "uint8"), device)
        seconds = library.time_evaluator("probe", device, number=1, repeat=5)(seed, out).median
        instructions = 4 * ITERATIONS / seconds
        lines.append(f"| {name} | {instructions / 1e9:.3f} ({clock_ghz / instructions * 1e9:.1f} cycles at {clock_ghz:.2f} GHz) "
                     f"| {instructions * multiply_adds / 1e9:.0f} |")
        print(lines[-1], flush=True)
    (Path(__file__).parent / "results" / "dot_peak.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
