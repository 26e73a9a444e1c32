"""Integer dot-product instructions (x86 and ARM), as TIR tensor intrinsics, and which one a target has.

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
- Armv8.2 dotprod `sdot` (Cortex-A76 of the Raspberry Pi 5, Jetson Orin's A78AE): int8 × int8,
  4 lanes × 4 steps. Activations arrive as uint8 and are read as int8 by flipping their top bit
  (x − 128, one `eor` per 16 bytes), so the compute it replaces is (x − 128)·w and the zero point's
  share becomes (zero_point − 128) · Σ w. (`usdot`, u8 × s8, needs i8mm, which none of Kiln's
  ARM presets has.)

The instruction a packed layer was built for is named on its compute block (`DOT_ANNOTATION`), so
the schedule tensorizes with exactly the layout `pack_weights.py` chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvm import tirx
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
    activation_offset: int = 0  # what the instruction itself takes off each activation (sdot: 128)
    weight: str = "int8"  # the weight dtype it reads
    accumulator: str = "int32"  # what it accumulates in
    tile_rows: int = 1  # the most output rows one instruction computes (AMX: tiles of up to 16, `amx.py`)
    steps_multiple: int = 0  # the reduction length per tap must be a multiple of this (0: any, padded to groups)

    @property
    def llvm_base_name(self) -> str:
        """The intrinsic's name without its overload's type suffixes (`.v4i32.v16i8`), as TIR prints it."""
        return re.sub(r"(\.v\d+[if]\d+)+$", "", self.llvm_intrinsic)

    @property
    def is_tile(self) -> bool:
        """A matrix unit (AMX), scheduled by `amx.py`, rather than a vector instruction."""
        return self.tile_rows > 1

    def product(self, activation, weight):
        """One multiply-add term as the instruction computes it, in its accumulator's type (TE or
        TIR values)."""
        widened = activation.astype(self.accumulator)
        if self.activation_offset:
            widened = widened - self.activation_offset
        return widened * weight.astype(self.accumulator)


DOT_ANNOTATION = "kiln.dot"  # block annotation: the DotInstruction.name a packed integer layer is laid out for
TAPS_ANNOTATION = "kiln.dot_taps"  # "KHxKW": a stride-1 convolution whose AMX kernel may take all its taps


def _vector_intrinsic(dot: DotInstruction, body):
    """A tensor function over one instruction's operands: a group of activations (broadcast to
    every lane), a lanes × group weight panel, the lanes' accumulators; `body` (a T.macro of
    A, B, C) says what it does."""
    lanes, group = dot.lanes, dot.group

    @T.prim_func(s_tir=True)
    def function(
        A: T.Buffer((group,), dot.activation, offset_factor=1),
        B: T.Buffer((lanes, group), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            body(A, B, C)

    return function


def _description(dot: DotInstruction):
    @T.macro
    def multiply_add(A, B, C):
        for i in T.serial(0, dot.lanes):
            for k in T.serial(0, dot.group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + dot.product(A[vk], B[vi, vk])

    return _vector_intrinsic(dot, multiply_add)


def _vpmaddwd(dot: DotInstruction):
    lanes, group = dot.lanes, dot.group

    @T.macro
    def avx2(A, B, C):
        pair = T.reinterpret(A.vload([0], f"int16x{group}"), dtype="int32")
        weights = T.cast(B.vload([0, 0], f"int8x{lanes * group}"), f"int16x{lanes * group}")
        C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(dot.llvm_intrinsic),
            T.reinterpret(T.broadcast(pair, lanes), dtype=f"int16x{lanes * group}"),
            weights,
            dtype=f"int32x{lanes}",
        )

    return _vector_intrinsic(dot, avx2)


def _activation_quad(A, dot: DotInstruction):
    """The group's activation bytes as one int32, as the instruction reads them: uint8 for
    vpdpbusd; for sdot int8, uint8 − 128, the same bits with the top one flipped."""
    raw = A.vload([0], f"uint8x{dot.group}")
    if dot.activation_offset:
        raw = tirx.bitwise_xor(raw, tirx.Broadcast(tirx.const(dot.activation_offset, "uint8"), dot.group))
    return tirx.reinterpret("int32", raw)


def _accumulating_dot(dot: DotInstruction):
    """vpdpbusd and sdot: lanes += Σ group (activation byte broadcast to every lane) × weight byte,
    accumulating in place."""
    lanes, group = dot.lanes, dot.group

    @T.macro
    def accumulating(A, B, C):
        # the LLVM that TVM 0.27 links types both byte operands as <64 x i8> (<16 x i8> on ARM)
        C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(dot.llvm_intrinsic),
            C.vload([0], f"int32x{lanes}"),
            T.reinterpret(T.broadcast(_activation_quad(A, dot), lanes), dtype=f"int8x{lanes * group}"),
            B.vload([0, 0], f"int8x{lanes * group}"),
            dtype=f"int32x{lanes}",
        )

    return _vector_intrinsic(dot, accumulating)


AVX2_VPMADDWD = DotInstruction("kiln_avx2_vpmaddwd_8x2_i16_i8_i32", "vpmaddwd", "llvm.x86.avx2.pmadd.wd", 8, 2, "int16", True)
AVX512_VNNI = DotInstruction("kiln_avx512_vpdpbusd_16x4_u8_i8_i32", "vpdpbusd", "llvm.x86.avx512.vpdpbusd.512", 16, 4, "uint8", False)
# AMX tdpbusd: a 16 × 16 int32 tile += 16 rows × 64 uint8 · 64 × 16 int8 (the VNNI-interleaved panel
# rows), 16,384 multiply-adds per instruction; scheduled and tensorized per layer shape by `amx.py`
AMX_INT8 = DotInstruction("kiln_amx_tdpbusd", "tdpbusd", "llvm.x86.tdpbusd", 16, 4, "uint8", False, tile_rows=16, steps_multiple=64)
# AMX tdpbf16ps: a 16 × 16 float32 tile += 16 rows × 32 bfloat16 · 32 × 16 bfloat16 (pairs interleaved)
AMX_BF16 = DotInstruction("kiln_amx_tdpbf16ps", "tdpbf16ps", "llvm.x86.tdpbf16ps", 16, 2, "bfloat16", False,
                          weight="bfloat16", accumulator="float32", tile_rows=16, steps_multiple=32)
AMX_TILES = {dot.name: dot for dot in (AMX_INT8, AMX_BF16)}
AMX_PANEL_WIDTHS = (64, 48, 32, 16)  # one AMX kernel's columns: up to four accumulator tiles
ARM_SDOT = DotInstruction("kiln_neon_sdot_4x4_u8_i8_i32", "sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, 4, "uint8", False, 128)
_IMPLEMENTATIONS = ((AVX2_VPMADDWD, _vpmaddwd), (AVX512_VNNI, _accumulating_dot), (ARM_SDOT, _accumulating_dot))
INSTRUCTIONS = {dot.name: dot for dot, _ in _IMPLEMENTATIONS}
for _dot, _implementation in _IMPLEMENTATIONS:
    TensorIntrin.register(_dot.name, _description(_dot), _implementation(_dot), override=True)


DOT_INSTRUCTIONS = (AMX_INT8, AMX_BF16, AVX512_VNNI, AVX2_VPMADDWD, ARM_SDOT)  # every instruction Kiln's kernels use


def integer_dots(target: Target) -> list[DotInstruction]:
    """The instructions the target's CPU has, fastest first (none without AVX2 or dotprod): on
    x86 a layer whose uint8 activations are not visible to `pack_weights.py` falls back to vpmaddwd."""
    if target.kind.name != "llvm":
        return []
    features = set(llvm_get_cpu_features(target))
    if str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return [ARM_SDOT] if "dotprod" in features else []
    found = [AMX_INT8] if {"amx-tile", "amx-int8"} <= features else []
    found += [AVX512_VNNI] if {"avx512vnni", "avx512bw", "avx512f"} <= features else []
    return found + ([AVX2_VPMADDWD] if "avx2" in features else [])


def bf16_dots(target: Target) -> list[DotInstruction]:
    """The bfloat16 dot-product units the target's CPU has: AMX-BF16 (AVX-512 BF16's `vdpbf16ps`
    cannot be reached: TVM 0.27 legalizes every bfloat16 value to float32 before code generation,
    and its LLVM code generator crashes on bfloat16 vectors, which that instruction's intrinsic takes)."""
    if target.kind.name != "llvm":
        return []
    return [AMX_BF16] if {"amx-tile", "amx-bf16"} <= set(llvm_get_cpu_features(target)) else []
