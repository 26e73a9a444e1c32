"""x86 integer dot-product instructions, as TIR tensor intrinsics, and which one a target has.

Each multiplies one group of consecutive reduction steps of an activation (broadcast to every
lane) with a weight panel of `lanes` output channels × that group, stored group-interleaved
(`pack_weights.py`), and adds into `lanes` int32 accumulators of the register tile:

    C[i] += A[0]·B[i, 0] + … + A[group-1]·B[i, group-1]      for the output channels i

- AVX-512 VNNI `vpdpbusd` (Zen 4/5, Xeon since Cascade Lake): uint8 activations × int8 weights,
  16 lanes × 4 steps = 64 multiply-adds per instruction, accumulating in place. Activations stay
  uint8 with their zero point; the zero point's share, zero_point · Σ w per output channel, is a
  constant taken off after the reduction (computed at compile time), and padding is the zero point.
- AVX2 `vpmaddwd`: no u8×s8 dot product into int32 exists (pmaddubsw saturates its int16 sums), but
  vpmaddwd multiplies sixteen int16 pairs and adds each adjacent pair into eight int32 lanes without
  saturating: 8 lanes × 2 steps. Activations reach it as int16 less their zero point (real zero
  is 0, so padding needs no correction); weights are sign-extended as they are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features


@dataclass(frozen=True)
class DotInstruction:
    name: str  # the registered tensor intrinsic
    mnemonic: str  # what appears in the generated assembly
    llvm_intrinsic: str  # what appears in the scheduled TIR
    lanes: int  # int32 accumulators per instruction
    group: int  # reduction steps per lane per instruction
    activation: str  # the activation dtype the instruction reads
    subtracts_zero_point: bool  # True: activations arrive less their zero point (int16); False: raw uint8 + correction


def _description(dot: DotInstruction):
    lanes, group = dot.lanes, dot.group

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((group,), dot.activation, offset_factor=1),
        B: T.Buffer((lanes, group), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return description


def _vpmaddwd(dot: DotInstruction):
    lanes, group = dot.lanes, dot.group

    @T.prim_func(s_tir=True)
    def avx2(
        A: T.Buffer((group,), dot.activation, offset_factor=1),
        B: T.Buffer((lanes, group), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            pair = T.reinterpret(A.vload([0], f"int16x{group}"), dtype="int32")
            weights = T.cast(B.vload([0, 0], f"int8x{lanes * group}"), f"int16x{lanes * group}")
            C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(dot.llvm_intrinsic),
                T.reinterpret(T.broadcast(pair, lanes), dtype=f"int16x{lanes * group}"),
                weights,
                dtype=f"int32x{lanes}",
            )

    return avx2


def _vpdpbusd(dot: DotInstruction):
    lanes, group = dot.lanes, dot.group

    @T.prim_func(s_tir=True)
    def vnni(
        A: T.Buffer((group,), dot.activation, offset_factor=1),
        B: T.Buffer((lanes, group), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            quad = T.reinterpret(A.vload([0], f"uint8x{group}"), dtype="int32")
            # the LLVM that TVM 0.27 links types both byte operands as <64 x i8>
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(dot.llvm_intrinsic),
                C.vload([0], f"int32x{lanes}"),
                T.reinterpret(T.broadcast(quad, lanes), dtype=f"int8x{lanes * group}"),
                B.vload([0, 0], f"int8x{lanes * group}"),
                dtype=f"int32x{lanes}",
            )

    return vnni


AVX2_VPMADDWD = DotInstruction("kiln_avx2_vpmaddwd_8x2_i16_i8_i32", "vpmaddwd", "llvm.x86.avx2.pmadd.wd", 8, 2, "int16", True)
AVX512_VNNI = DotInstruction("kiln_avx512_vpdpbusd_16x4_u8_i8_i32", "vpdpbusd", "llvm.x86.avx512.vpdpbusd.512", 16, 4, "uint8", False)
INSTRUCTIONS = {AVX2_VPMADDWD.name: (AVX2_VPMADDWD, _vpmaddwd), AVX512_VNNI.name: (AVX512_VNNI, _vpdpbusd)}
for _dot, _implementation in INSTRUCTIONS.values():
    TensorIntrin.register(_dot.name, _description(_dot), _implementation(_dot), override=True)


def integer_dots(target: Target) -> list[DotInstruction]:
    """The instructions the target's CPU has, fastest first (none off x86 or below AVX2): a layer
    whose uint8 activations are not visible to `pack_weights.py` falls back to vpmaddwd."""
    if target.kind.name != "llvm":
        return []
    features = set(llvm_get_cpu_features(target))
    found = [AVX512_VNNI] if {"avx512vnni", "avx512bw", "avx512f"} <= features else []
    return found + ([AVX2_VPMADDWD] if "avx2" in features else [])


def instruction_for(group: int, activation: str) -> DotInstruction | None:
    """The instruction whose layout a packed integer layer was built for (its panels' group size)."""
    return next((dot for dot, _ in INSTRUCTIONS.values() if dot.group == group and dot.activation == activation), None)
