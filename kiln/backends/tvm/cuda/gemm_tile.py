"""The thread-block tile of a tensor-core GEMM, sized to the layer and the GPU.

DLight's tensor-core schedule gives every GEMM one tile: 128 × 128 outputs per thread block (16
warps, each 2 × 2 fragments of 16 × 16). A batch-1 network's GEMMs are small: ResNet-18's last
stage is M = 49 (7 × 7 pixels) by N = 512, so that tile pads M to 128 and launches 4 blocks on a
GPU of 132 streaming multiprocessors; an encoder's 128 tokens × 768 launch 6. The time of such a
launch is one block's time, so a smaller tile that puts a block on more of the multiprocessors
finishes sooner, even though each block reuses its operands less. `choose_tile` weighs the two:
waves of blocks over the multiprocessors, times one block's work, over its operand reuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

FRAGMENT = 16  # a WMMA fragment's side (m16n16k16)


@dataclass(frozen=True)
class GemmTile:
    """Warps per block along M and N, and 16 × 16 fragments per warp along M and N; each step of
    the block's K loop loads `k_fragments` fragments of K into shared memory."""

    warps_m: int
    warps_n: int
    fragments_m: int
    fragments_n: int
    k_fragments: int = 4

    @property
    def rows(self) -> int:
        return self.warps_m * self.fragments_m * FRAGMENT

    @property
    def columns(self) -> int:
        return self.warps_n * self.fragments_n * FRAGMENT

    @property
    def warps(self) -> int:
        return self.warps_m * self.warps_n

    def reuse(self) -> float:
        """Multiply-adds per operand element loaded into shared memory: rows·columns/(rows+columns)."""
        return self.rows * self.columns / (self.rows + self.columns)

    def describe(self) -> str:
        return f"{self.rows}x{self.columns}"


DLIGHT_TILE = GemmTile(4, 4, 2, 2)  # 128 × 128, DLight's for every GEMM; kept where a size is unknown
CANDIDATES = (
    DLIGHT_TILE,
    GemmTile(2, 4, 2, 2),  # 64 × 128
    GemmTile(4, 2, 2, 2),  # 128 × 64
    GemmTile(2, 2, 2, 2),  # 64 × 64
    GemmTile(2, 2, 1, 2),  # 32 × 64
    GemmTile(2, 2, 2, 1),  # 64 × 32
    GemmTile(2, 1, 1, 2),  # 32 × 32 in 2 warps (in 4 warps of one fragment, ptxas spilled a few registers of one kernel)
)

# streaming multiprocessors of the largest part of each architecture (a smaller part only makes
# the chosen tile's waves a little longer); Jetson Orin's is the AGX module's
MULTIPROCESSORS = {"sm_70": 80, "sm_72": 8, "sm_75": 40, "sm_80": 108, "sm_86": 84, "sm_87": 16, "sm_89": 128, "sm_90": 132}
DEFAULT_MULTIPROCESSORS = 108


def multiprocessors(arch: str) -> int:
    return MULTIPROCESSORS.get(arch, DEFAULT_MULTIPROCESSORS)


def launch_cost(tile: GemmTile, rows: int, columns: int, sms: int) -> float:
    """Relative time of the GEMM with `tile`: waves of blocks, each a tile's padded work over its
    operand reuse (a block's speed, to first order, is that of its shared-memory traffic)."""
    blocks = math.ceil(rows / tile.rows) * math.ceil(columns / tile.columns)
    return math.ceil(blocks / sms) * tile.rows * tile.columns / tile.reuse()


def choose_tile(rows: int | None, columns: int | None, depth: int | None, arch: str, operands: str = "float16") -> GemmTile:
    """The cheapest candidate tile for an M × N output by `launch_cost` (ties: the larger tile);
    DLight's 128 × 128 when M or N is dynamic; its K step from K = `depth` (`k_fragments`)."""
    tile = DLIGHT_TILE
    if rows is not None and columns is not None:
        sms = multiprocessors(arch)
        tile = min(CANDIDATES, key=lambda tile: (launch_cost(tile, rows, columns, sms), -tile.rows * tile.columns))
    return replace(tile, k_fragments=k_fragments(depth, operands))


def k_fragments(depth: int | None, operands: str = "float16") -> int:
    """Fragments of K per step of a block's K loop. float16: DLight's 4 where they divide K =
    `depth`, else 2, which pads K less (MobileNetV2's 1 × 1 convolutions of 96 channels padded to
    128 wasted a quarter of their work; 144 pads to 160, not 192); odd steps do not build (TVM's
    software pipeline loses track of the WMMA fragments: "fragment_info" check). int8: 1, as
    DLight's int8 schedule (with 4 or 2, ptxas spilled registers of ResNet-18's int8 32 × 32 tiles)."""
    if operands == "int8":
        return 1
    if depth is None:
        return DLIGHT_TILE.k_fragments
    return 4 if depth % (4 * FRAGMENT) == 0 else 2
