"""An integer dot-product instruction for AVX2 x86 CPUs, as a TIR tensor intrinsic.

AVX2 has no u8×s8 dot product into int32 (VNNI's vpdpbusd is AVX-512/AVX-VNNI only), and its
pmaddubsw saturates int16 sums of u8×s8 products. `vpmaddwd` does not saturate: it multiplies
sixteen int16 pairs and adds each adjacent pair into eight int32 lanes. So activations reach the
kernel as int16 (uint8 values less their zero point, or int8 values), weights stay int8 in memory
and are sign-extended as they are loaded, and one instruction does 16 multiply-adds:

    C[i] += A[0]·B[i, 0] + A[1]·B[i, 1]      for the 8 output channels i

with A two consecutive input channels of one pixel (broadcast to every lane) and B the weight
panel of 8 output channels × those 2 input channels, stored pair-interleaved (`pack_weights.py`).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

LANES = 8  # int32 accumulators per ymm register (a "local" buffer: the register tile of schedules.py)
PAIR = 2  # reduction steps per vpmaddwd


def _intrinsic(activation_dtype: str):
    widened = f"int16x{PAIR}"

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((PAIR,), activation_dtype, offset_factor=1),
        B: T.Buffer((LANES, PAIR), "int8", offset_factor=1),
        C: T.Buffer((LANES,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:PAIR], B[0:LANES, 0:PAIR])
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, PAIR):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def avx2(
        A: T.Buffer((PAIR,), activation_dtype, offset_factor=1),
        B: T.Buffer((LANES, PAIR), "int8", offset_factor=1),
        C: T.Buffer((LANES,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:PAIR], B[0:LANES, 0:PAIR])
            T.writes(C[0:LANES])
            pair = T.reinterpret(T.cast(A.vload([0], f"{activation_dtype}x{PAIR}"), widened), dtype="int32")
            weights = T.cast(B.vload([0, 0], f"int8x{LANES * PAIR}"), f"int16x{LANES * PAIR}")
            C[T.ramp(T.int32(0), 1, LANES)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(pair, LANES), dtype=f"int16x{LANES * PAIR}"),
                weights,
                dtype=f"int32x{LANES}",
            )

    return description, avx2


AVX2_DOT = {dtype: f"kiln_avx2_dot_{LANES}x{PAIR}_{dtype}_i8_i32" for dtype in ("int16", "int8")}
for _dtype, _name in AVX2_DOT.items():
    TensorIntrin.register(_name, *_intrinsic(_dtype), override=True)
