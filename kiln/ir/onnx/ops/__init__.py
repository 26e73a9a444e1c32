"""ONNX's operators as torch operators, one module per family over one registry (`registry.py`:
each converter registers itself for its op types with `@converts`):

    elementwise  math, comparisons, logic, activations, clip, where, casts
    shape        reshape, transpose, concat, split, slice, pad, expand, tile, ranges, einsum
    index        gathers, scatters, one-hot, top-k
    reduce       reductions, arg-extrema, scans
    layers       convolutions, pooling, normalizations, Gemm, softmax
    nn           composite layers: losses, attention, rotary embeddings, resizing, grid sampling
    quant        quantize, dequantize and the integer ops
    recurrent    LSTM, GRU, RNN
    control      If
"""

from kiln.ir.onnx.ops import control, elementwise, index, layers, nn, quant, recurrent, reduce, shape  # noqa: F401 - they register
from kiln.ir.onnx.ops.registry import CONVERTERS

__all__ = ["CONVERTERS"]
