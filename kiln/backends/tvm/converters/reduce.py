"""Reductions and scans."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from kiln.backends.tvm.converters.common import in_float32


def _extremum(x, axes: list[int], keepdims: bool, op_name: str):
    """max/min over `axes` whose identity is ∓inf: TOPI's starts from the lowest (highest) finite
    value, so a reduction over values that are all -inf (fully masked attention rows) returned
    -3.4e38 instead of -inf."""
    from tvm import te, tirx

    rank = len(x.shape)
    axes = sorted(a % rank for a in axes)
    combine = te.max if op_name == "max" else te.min
    identity = float("-inf") if op_name == "max" else float("inf")
    reducer = te.comm_reducer(lambda a, b: combine(a, b), lambda dtype: tirx.const(identity, dtype), name=f"{op_name}_inf")
    reduce_axes = {a: te.reduce_axis((0, x.shape[a]), name=f"k{a}") for a in axes}
    shape = [1 if i in reduce_axes else d for i, d in enumerate(x.shape)] if keepdims else [d for i, d in enumerate(x.shape) if i not in reduce_axes]

    def element(*index):
        kept = iter(index)
        full = [reduce_axes[i] if i in reduce_axes else next(kept) for i in range(rank)] if not keepdims else [
            reduce_axes[i] if i in reduce_axes else index[i] for i in range(rank)]
        return reducer(x(*full), axis=list(reduce_axes.values()))

    return te.compute(shape, element, name=f"{op_name}_inf")


def _reduce(op_name: str):
    """amax/amin, which TVM's importer lacks: over the given dims, with an infinite identity for floats."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x = importer.env[node.args[0]]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        axes = [dims] if isinstance(dims, int) else list(dims) or list(range(len(x.ty.shape)))
        if "float" in str(x.ty.dtype):
            return importer.block_builder.emit_te(_extremum, x, axes, keepdim, op_name)
        return importer.block_builder.emit(getattr(relax.op, op_name)(x, axes, keepdim))

    return convert


def _prod(node: fx.Node, importer) -> Any:
    """prod over one dim (ONNX ReduceProd), which TVM's importer lacks."""
    from tvm import relax

    x = importer.env[node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return importer.block_builder.emit(relax.op.prod(x, [dim % len(x.ty.shape)], keepdim))


def _scan(topi_name: str):
    """cumsum/cumprod through TOPI's scan kernels: the importer emits Relax's cumsum, which
    LegalizeOps leaves unlowered on CPU targets (the VM then refuses the module)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import topi

        x = importer.env[node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        dtype = node.kwargs.get("dtype")
        return importer.block_builder.emit_te(getattr(topi, topi_name), x, dim % len(x.ty.shape), str(dtype).removeprefix("torch.") if dtype else None)

    return convert


CONVERTERS: dict[str, Callable[..., Any]] = {
    "amax.default": _reduce("max"),
    "amin.default": _reduce("min"),
    "prod.dim_int": _prod,
    "cumsum.default": _scan("cumsum"),
    "cumprod.default": _scan("cumprod"),
    **{name: in_float32(name) for name in ("sum.default", "sum.dim_IntList", "mean.default", "mean.dim")},
}
