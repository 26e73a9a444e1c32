"""Elementwise ops: activations and bitwise shifts."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx


def _hardtanh(node: fx.Node, importer) -> Any:
    """relu6/hardtanh as max-then-min: elementwise ops with scalars, which layout conversion passes
    through (the stock `clip` makes it transpose around every ReLU6 of a channels-last graph)."""
    from tvm import relax

    x = importer.env[node.args[0]]
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    dtype = x.ty.dtype
    clipped = relax.op.minimum(relax.op.maximum(x, relax.const(low, dtype)), relax.const(high, dtype))
    return importer.block_builder.emit(clipped)


def _gelu(node: fx.Node, importer) -> Any:
    """GELU spelled out with erf (or tanh), so the fast-math pass gives it a vectorizable
    polynomial: TVM's own gelu calls the scalar libm erf, 9 ns an element here."""
    import math

    from tvm import relax

    x = importer.env[node.args[0]]
    dtype = x.ty.dtype
    c = lambda value: relax.const(value, dtype)
    if node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "tanh":
        inner = relax.op.multiply(c(math.sqrt(2 / math.pi)), relax.op.add(x, relax.op.multiply(c(0.044715), relax.op.power(x, c(3.0)))))
        gate = relax.op.tanh(inner)
    else:
        gate = relax.op.erf(relax.op.multiply(x, c(1 / math.sqrt(2))))
    return importer.block_builder.emit(relax.op.multiply(relax.op.multiply(x, c(0.5)), relax.op.add(c(1.0), gate)))


def _shift(relax_name: str):
    """bitwise shifts, which TVM's importer lacks, as Relax's (a left shift wraps around in the dtype)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x, shift = (importer.env[a] for a in node.args[:2])
        return importer.block_builder.emit(getattr(relax.op, relax_name)(x, shift))

    return convert


CONVERTERS: dict[str, Callable[..., Any]] = {
    "hardtanh.default": _hardtanh,
    "hardtanh_.default": _hardtanh,
    "gelu.default": _gelu,
    "bitwise_left_shift.Tensor": _shift("left_shift"),
    "bitwise_right_shift.Tensor": _shift("right_shift"),
}
