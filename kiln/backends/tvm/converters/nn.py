"""Neural-network layers: convolutions and normalizations, and grid sampling."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from kiln.backends.tvm.converters.common import in_float32, in_input_dtype


def _conv(name: str):
    """conv1d/2d/3d: float64 ones computed in float64 (through the importer's float32 they had
    float32's accuracy, found by the fuzzer); other dtypes as `in_input_dtype`."""
    in_dtype = in_input_dtype(name)

    def convert(node: fx.Node, importer) -> Any:
        if str(importer.env[node.args[0]].ty.dtype) != "float64":
            return in_dtype(node, importer)
        args = importer.retrieve_args(node)
        x, weight, bias, stride, padding, dilation, groups = (list(args) + [None, None, None, 1, 0, 1, 1][len(args):])[:7]
        return _convolution_in_dtype(importer, x, weight, bias, stride, padding, dilation, groups)

    return convert


def _convolution_in_dtype(importer, x, weight, bias, stride, padding, dilation, groups) -> Any:
    """A 1/2/3-D convolution (channels first) computed and returned in its input's dtype."""
    from tvm import relax

    rank = len(x.ty.shape) - 2
    op = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}[rank]
    data_layout, kernel_layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[rank]
    result = importer.block_builder.emit(op(
        x, weight, strides=stride, padding=padding, dilation=dilation, groups=groups, data_layout=data_layout,
        kernel_layout=kernel_layout, out_dtype=str(x.ty.dtype)))
    if bias is None:
        return result
    return importer.block_builder.emit(relax.op.add(result, relax.op.reshape(bias, (1, -1) + (1,) * rank)))


def _convolution(node: fx.Node, importer) -> Any:
    """convolution, with 3-D transposed convolutions (ONNX ConvTranspose on volumes), which the
    importer refuses, emitted as Relax's conv3d_transpose."""
    from tvm import relax

    args = importer.retrieve_args(node)
    x, weight, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    if not transposed and str(x.ty.dtype) == "float64":
        return _convolution_in_dtype(importer, x, weight, bias, stride, padding, dilation, groups)
    if not (transposed and len(x.ty.shape) == 5):
        return in_input_dtype("convolution.default")(node, importer)
    result = importer.block_builder.emit(relax.op.nn.conv3d_transpose(
        x, weight, strides=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups,
        data_layout="NCDHW", kernel_layout="IODHW", out_dtype=str(x.ty.dtype)))
    if bias is None:
        return result
    return importer.block_builder.emit(relax.op.add(result, relax.op.reshape(bias, (1, -1, 1, 1, 1))))


def _layer_norm(name: str):
    """layer norm of float64 inputs from its mean and variance: TVM's layer_norm legalizes only
    float32 and float16. Other dtypes take the importer's implementation, given the weight and
    bias where there are (its converter looks a missing one up and fails)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x = importer.env[node.args[0]]
        dtype = str(x.ty.dtype)
        weight, bias = (importer.env.get(node.args[i]) if len(node.args) > i and node.args[i] is not None else None for i in (2, 3))
        eps = node.args[4] if len(node.args) > 4 else 1e-5
        if dtype != "float64":
            return importer._layer_norm_impl(x, weight, bias, eps, node.args[1])
        bb = importer.block_builder
        axes = list(range(-len(node.args[1]), 0))
        centered = bb.emit(relax.op.subtract(x, relax.op.mean(x, axes, keepdims=True)))
        variance = bb.emit(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
        y = bb.emit(relax.op.multiply(centered, relax.op.rsqrt(relax.op.add(variance, relax.const(eps, dtype)))))
        if weight is not None:
            y = bb.emit(relax.op.multiply(y, weight))
        if bias is not None:
            y = bb.emit(relax.op.add(y, bias))
        return y

    return convert


def _group_norm(node: fx.Node, importer) -> Any:
    """group_norm, with ones and zeros where the weight or bias is None (the importer's converter
    looks a missing one up and fails)."""
    import numpy as np
    from tvm import relax

    x = importer.env[node.args[0]]
    groups = node.args[1]
    eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
    channels, dtype = int(x.ty.shape[1]), str(x.ty.dtype)
    given = [node.args[i] if len(node.args) > i else node.kwargs.get(name) for i, name in ((2, "weight"), (3, "bias"))]
    weight, bias = (importer.env[value] if value is not None else relax.const(np.full(channels, fill, dtype=dtype), dtype)
                    for value, fill in zip(given, (1, 0)))
    return importer.block_builder.emit(relax.op.nn.group_norm(
        x, weight, bias, num_groups=groups, channel_axis=1, axes=list(range(2, len(x.ty.shape))), epsilon=eps))


def _grid_sampler_2d(node: fx.Node, importer) -> Any:
    """grid_sample with the grid moved to the [N, 2, H, W] layout TVM's kernel reads: the stock
    converter passes torch's [N, H, W, 2] grid as it is, and the result comes out transposed."""
    from tvm import relax

    data, grid = importer.env[node.args[0]], importer.env[node.args[1]]
    method = {0: "bilinear", 1: "nearest", 2: "bicubic"}[node.args[2]]
    padding = {0: "zeros", 1: "border", 2: "reflection"}[node.args[3]]
    grid = importer.block_builder.emit(relax.op.permute_dims(grid, [0, 3, 1, 2]))
    return importer.block_builder.emit(
        relax.op.image.grid_sample(data, grid, method=method, layout="NCHW", padding_mode=padding, align_corners=bool(node.args[4]))
    )


CONVERTERS: dict[str, Callable[..., Any]] = {
    **{name: _layer_norm(name) for name in ("layer_norm.default", "native_layer_norm.default")},
    "group_norm.default": _group_norm,
    "grid_sampler_2d.default": _grid_sampler_2d,
    **{name: in_float32(name) for name in ("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default")},
    **{name: _conv(name) for name in ("conv1d.default", "conv2d.default", "conv3d.default")},
    **{name: in_input_dtype(name) for name in ("conv_transpose1d.default", "conv_transpose2d.input")},
    "convolution.default": _convolution,
}
