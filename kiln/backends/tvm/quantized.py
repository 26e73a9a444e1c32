"""TVM lowering of Kiln's integer operators (kiln/ir/quantized_ops.py): uint8 × int8 convolutions
and matmuls with int32 accumulation, as Relax integer ops that TVM compiles to integer kernels."""

from __future__ import annotations

from typing import Any

import torch.fx as fx


def _quantize(node: fx.Node, importer) -> Any:
    from tvm import relax

    x, scale, zero_point = importer.env[node.args[0]], node.args[1], node.args[2]
    dtype = x.ty.dtype
    scaled = relax.op.add(relax.op.round(relax.op.divide(x, relax.const(scale, dtype))), relax.const(float(zero_point), dtype))
    return importer.block_builder.emit(relax.op.astype(relax.op.clip(scaled, 0, 255), "uint8"))


def _quantize_dynamic(node: fx.Node, importer) -> Any:
    from tvm import relax

    x = importer.env[node.args[0]]
    bb = importer.block_builder
    dtype = x.ty.dtype
    row_max = relax.op.max(relax.op.abs(x), axis=-1, keepdims=True)
    scale = bb.emit(relax.op.divide(relax.op.maximum(row_max, relax.const(1e-8, dtype)), relax.const(127.0, dtype)))
    values = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(relax.op.divide(x, scale)), -127, 127), "int8"))
    return bb.emit(relax.Tuple([values, scale]))


def _zero_point_correction(bb, weight, zero_point: int, axes: list[int]):
    """zero_point × Σw over each output channel's reduction: (x − zp)·w = x·w − zp·Σw (a
    constant that FoldConstant computes at build time)."""
    from tvm import relax

    sums = bb.emit(relax.op.sum(bb.emit(relax.op.astype(weight, "int32")), axis=axes))
    return bb.emit(relax.op.multiply(sums, relax.const(zero_point, "int32")))


def _qconv2d(node: fx.Node, importer) -> Any:
    from tvm import relax

    x, zero_point, weight = importer.env[node.args[0]], node.args[1], importer.env[node.args[2]]
    stride, padding, dilation, groups = node.args[3], node.args[4], node.args[5], node.args[6]
    bb = importer.block_builder
    if any(padding):  # padded with the zero point: padding adds nothing once the correction is taken off
        x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, padding[0], padding[0], padding[1], padding[1]], pad_value=float(zero_point)))
    accumulated = bb.emit(relax.op.nn.conv2d(x, weight, stride, 0, dilation, groups, out_dtype="int32"))
    if zero_point == 0:
        return accumulated
    correction = bb.emit(relax.op.reshape(_zero_point_correction(bb, weight, zero_point, [1, 2, 3]), [1, -1, 1, 1]))
    return bb.emit(relax.op.subtract(accumulated, correction))


def _qlinear(node: fx.Node, importer) -> Any:
    from tvm import relax

    x, zero_point, weight = importer.env[node.args[0]], node.args[1], importer.env[node.args[2]]
    bb = importer.block_builder
    accumulated = bb.emit(relax.op.matmul(x, relax.op.permute_dims(weight, [1, 0]), out_dtype="int32"))
    if zero_point == 0:
        return accumulated
    return bb.emit(relax.op.subtract(accumulated, _zero_point_correction(bb, weight, zero_point, [1])))


QUANTIZED_CONVERTERS = {
    "quantize.default": _quantize,
    "qconv2d.default": _qconv2d,
    "qlinear.default": _qlinear,
    "quantize_dynamic.default": _quantize_dynamic,
}
