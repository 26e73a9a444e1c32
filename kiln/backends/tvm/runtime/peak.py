"""This core's measured peak rate for an instruction: what a kernel's GFLOP/s is read against
(`cm.profile()`, benchmarks/dot_peak.py).

A probe is a TIR loop of CHAINS independent accumulator chains (more than latency × pipes on the
cores Kiln targets) updated by one instruction, built by TVM for this CPU and timed by TVM's
evaluator. A datasheet figure would need the clock and the number of FMA pipes, which neither
lscpu nor LLVM reports reliably (Zen 4 splits a 512-bit FMA over two 256-bit pipes, Zen 5 does not).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm.script import tirx as T

CHAINS = 12

# widest first: (LLVM intrinsic, lanes, CPU features it needs)
FP32_FMA = [("llvm.fma.v16f32", 16, {"avx512f"}), ("llvm.fma.v8f32", 8, {"avx2", "fma"})]


def vector_probe(intrinsic: str, accumulator: str, operand: str, lanes: int, iterations: int):
    """CHAINS accumulators of `lanes` updated `iterations` times by `intrinsic`(accumulator, a, b),
    a and b the first two vectors of the seed read as `operand` vectors."""
    vector = f"{accumulator}x{lanes}"

    @T.prim_func(s_tir=True)
    def probe(seed: T.Buffer((CHAINS * lanes,), accumulator), out: T.Buffer((CHAINS * lanes,), accumulator)):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        chains = T.alloc_buffer((CHAINS * lanes,), accumulator, scope="local")
        for c in T.unroll(CHAINS):
            chains[T.ramp(c * lanes, 1, lanes)] = seed[T.ramp(c * lanes, 1, lanes)]
        for _ in range(iterations):
            for c in T.unroll(CHAINS):
                chains[T.ramp(c * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(intrinsic), chains[T.ramp(c * lanes, 1, lanes)],
                    T.reinterpret(seed[T.ramp(0, 1, lanes)], dtype=operand),
                    T.reinterpret(seed[T.ramp(lanes, 1, lanes)], dtype=operand), dtype=vector)
        for c in T.unroll(CHAINS):
            out[T.ramp(c * lanes, 1, lanes)] = chains[T.ramp(c * lanes, 1, lanes)]

    return probe


def instructions_per_second(probe, target: tvm.target.Target, accumulator: str, lanes: int, iterations: int) -> float:
    library = tvm.tirx.build(tvm.IRModule({"probe": probe}), target=target)
    device = tvm.cpu()
    seed = tvm.runtime.tensor(np.arange(CHAINS * lanes).astype(accumulator) % 7 + 1, device)
    out = tvm.runtime.tensor(np.zeros(CHAINS * lanes, accumulator), device)
    seconds = library.time_evaluator("probe", device, number=1, repeat=5)(seed, out).median
    return CHAINS * iterations / seconds


@functools.cache
def fp32_peak_gflops() -> float | None:
    """One core's fp32 GFLOP/s on its widest FMA (2 flops per lane per instruction), measured once
    per process; None on a CPU without FMA."""
    from kiln.backends.targets import host_features, resolve_target

    target = tvm.target.Target(resolve_target("llvm").tvm_target)
    for intrinsic, lanes, needs in FP32_FMA:
        if needs <= host_features():
            iterations = 200_000
            rate = instructions_per_second(vector_probe(intrinsic, "float32", f"float32x{lanes}", lanes, iterations),
                                           target, "float32", lanes, iterations)
            return rate * lanes * 2 / 1e9
    return None
