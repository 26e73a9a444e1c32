"""Casts onto ONNX's narrow element types, computed in their wider carriers, against ml_dtypes (the
numpy types ONNX's reference uses): every representable value, every midpoint between neighbours
(the ties that round half to even), out-of-range values and specials, saturating or not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from kiln.ir.onnx import narrow_types as narrow

_T = onnx.TensorProto
FLOATS = [_T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ, _T.FLOAT4E2M1]
INTEGERS = [_T.INT4, _T.UINT4, _T.INT2, _T.UINT2]


def _numpy_type(onnx_type: int):
    return onnx.helper.tensor_dtype_to_np_dtype(onnx_type)


def _grid_and_midpoints(onnx_type: int) -> np.ndarray:
    if onnx_type == _T.FLOAT4E2M1:  # no 8-bit view: its eight magnitudes
        grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
        grid = np.concatenate([grid, -grid])
    else:
        grid = np.arange(256, dtype=np.uint8).view(_numpy_type(onnx_type)).astype(np.float32)
    grid = np.unique(grid[np.isfinite(grid)])
    midpoints = (grid[1:] + grid[:-1]) / 2
    specials = [np.inf, -np.inf, np.nan, 1e9, -1e9, 1e-30, -1e-30, 0.0]
    return np.concatenate([grid, midpoints, -midpoints, np.array(specials)]).astype(np.float32)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("onnx_type", FLOATS, ids=lambda t: _T.DataType.Name(t))
def test_float_cast_rounds_like_onnx_reference(onnx_type, saturate):
    x = _grid_and_midpoints(onnx_type)
    numpy_type = _numpy_type(onnx_type)
    if saturate and onnx_type != _T.FLOAT4E2M1:
        want = onnx.numpy_helper.saturate_cast(x, numpy_type)
    else:
        want = x.astype(numpy_type)
    got = narrow.cast(torch.from_numpy(x), onnx_type, saturate).numpy()
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert narrow.from_carrier_array(got, onnx_type).dtype == numpy_type


@pytest.mark.parametrize("onnx_type", INTEGERS, ids=lambda t: _T.DataType.Name(t))
def test_integer_cast_truncates_like_onnx_reference_and_wraps_out_of_range(onnx_type):
    """In range, floats truncate toward zero as the reference's astype does. Out of range, ONNX
    leaves the result undefined (ml_dtypes' own answer differs between CPUs: -9 → int4 is 7 on
    AMD EPYC, 0 on an AVX-512 Xeon); Kiln wraps around, two's complement, on every machine."""
    x = np.array([-20.7, -9, -8.5, -2.5, -0.4, 0, 0.5, 1.5, 2.5, 7.6, 9, 15, 16, 17, 300], dtype=np.float32)
    low, high = narrow.NARROW_TYPES[onnx_type].range
    got = narrow.cast(torch.from_numpy(x), onnx_type).numpy().astype(np.int32)
    truncated = np.trunc(x).astype(np.int32)
    in_range = (truncated >= low) & (truncated <= high)
    np.testing.assert_array_equal(got[in_range], x[in_range].astype(_numpy_type(onnx_type)).astype(np.int32))
    span = high - low + 1
    np.testing.assert_array_equal(got[~in_range], (truncated[~in_range] - low) % span + low)
    assert (~in_range).sum() >= 5
