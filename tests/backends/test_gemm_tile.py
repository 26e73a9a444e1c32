"""The tensor-core GEMM's thread-block tile (kiln/backends/tvm/cuda/gemm_tile.py): small layers
get smaller tiles that put blocks on more of the GPU, large ones keep DLight's 128 × 128, and the
K step divides K where it can."""

from __future__ import annotations

import math

import pytest

from kiln.backends.tvm.cuda.gemm_tile import CANDIDATES, DLIGHT_TILE, FRAGMENT, choose_tile, k_fragments, launch_cost, multiprocessors


def _blocks(tile, rows: int, columns: int) -> int:
    return math.ceil(rows / tile.rows) * math.ceil(columns / tile.columns)


@pytest.mark.parametrize("rows, columns, depth", [(49, 512, 4608), (196, 256, 2304), (128, 768, 768), (784, 128, 1152)])
def test_a_batch_1_layer_launches_more_blocks_than_dlights_tile(rows, columns, depth):
    # ResNet-18's last three stages and an encoder's 128 tokens × 768 at batch 1: DLight's tile
    # launches 4-7 blocks on an H100's 132 multiprocessors
    tile = choose_tile(rows, columns, depth, "sm_90")
    assert _blocks(tile, rows, columns) >= 4 * _blocks(DLIGHT_TILE, rows, columns)
    assert launch_cost(tile, rows, columns, 132) < launch_cost(DLIGHT_TILE, rows, columns, 132)


def test_a_large_gemm_keeps_dlights_tile():
    assert choose_tile(2048, 768, 768, "sm_90") == DLIGHT_TILE  # BERT-base at batch 16: 96 blocks already
    assert choose_tile(12544, 96, 16 * 9, "sm_80").rows == 128


def test_an_unknown_size_keeps_dlights_tile():
    assert (choose_tile(None, 768, 768, "sm_90").rows, choose_tile(128, None, 768, "sm_90").columns) == (128, 128)


def test_a_smaller_gpu_gets_larger_tiles():
    # Jetson Orin's 16 multiprocessors fill with fewer blocks
    small, large = choose_tile(784, 512, 4608, "sm_87"), choose_tile(784, 512, 4608, "sm_90")
    assert small.rows * small.columns > large.rows * large.columns
    assert multiprocessors("sm_87") < multiprocessors("sm_90") and multiprocessors("sm_999") > 0


@pytest.mark.parametrize("depth, steps", [(768, 4), (96, 2), (144, 2), (24, 2), (27, 2), (None, 4)])
def test_the_k_step_divides_k_where_it_can(depth, steps):
    assert k_fragments(depth) == steps
    assert choose_tile(49, 512, depth, "sm_90").k_fragments == steps


def test_int8_steps_one_fragment_of_k():
    assert choose_tile(49, 512, 4608, "sm_90", "int8").k_fragments == 1


def test_every_candidate_is_whole_fragments_in_whole_warps():
    for tile in CANDIDATES:
        assert tile.rows % FRAGMENT == 0 and tile.columns % FRAGMENT == 0 and 1 <= tile.warps <= 32
