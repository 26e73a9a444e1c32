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


def _weight_only_matmul(x, weight, scales, bits: int):
    """x [M, K] @ dequantized(weight)ᵀ, the weight widened inside the reduction: the int8/int4
    bytes are what the kernel reads (FoldConstant cannot turn them back into float constants)."""
    from tvm import te

    rows, depth = x.shape
    group = depth // scales.shape[1]
    k = te.reduce_axis((0, depth), name="k")

    def widened(j, kk):
        if bits == 8:
            return weight[j, kk].astype(x.dtype)
        nibble = (weight[j, kk // 2] >> ((kk % 2) * 4).astype("uint8")) & te.const(15, "uint8")
        return nibble.astype(x.dtype) - te.const(8.0, x.dtype)

    return te.compute(
        (rows, weight.shape[0]),
        lambda i, j: te.sum(x[i, k] * widened(j, k) * scales[j, k // group].astype(x.dtype), axis=k),
        name="linear_weight_only",
    )


def _linear_weight_only(node: fx.Node, importer) -> Any:
    from tvm import relax

    x, weight, scales = (importer.env[a] for a in node.args[:3])
    bits, bias = node.args[3], node.args[4] if len(node.args) > 4 else None
    bb = importer.block_builder
    shape = [int(d) for d in x.ty.shape]
    flat = bb.emit(relax.op.reshape(x, [-1, shape[-1]]))
    result = bb.emit_te(_weight_only_matmul, flat, weight, scales, bits)
    if bias is not None:
        result = bb.emit(relax.op.add(result, importer.env[bias]))
    return bb.emit(relax.op.reshape(result, shape[:-1] + [int(weight.ty.shape[0])]))


QUANTIZED_CONVERTERS = {
    "linear_weight_only.default": _linear_weight_only,
    "quantize.default": _quantize,
    "qconv2d.default": _qconv2d,
    "qlinear.default": _qlinear,
    "quantize_dynamic.default": _quantize_dynamic,
}
