"""Products: matmul in any rank, linear, addmm, in their inputs' dtype; grouped products of
mixture-of-experts layers."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from kiln.backends.tvm.converters.common import matmul_in_dtype, product_of, same_dim


def _matmul(node: fx.Node, importer) -> Any:
    """matmul/mm/bmm in the inputs' dtype (see matmul_in_dtype). An N-D matmul is reshaped as torch's
    decomposition reshapes it (to one 2-D product against a matrix, or one 3-D batched product
    when the batch dims agree), so an undecomposed program gets the decomposed one's kernels."""
    from tvm import relax

    bb = importer.block_builder
    a, b = importer.env[node.args[0]], importer.env[node.args[1]]
    a_shape, b_shape = list(a.ty.shape), list(b.ty.shape)
    if len(a_shape) > 2 and len(b_shape) == 2:
        return _rows_product(importer, a, b)
    if len(a_shape) > 3 and len(a_shape) == len(b_shape) and all(
            same_dim(x, y) for x, y in zip(a_shape[:-2], b_shape[:-2])):
        batch = product_of(a_shape[:-2])
        a3 = bb.emit(relax.op.reshape(a, [batch] + a_shape[-2:]))
        b3 = bb.emit(relax.op.reshape(b, [batch] + b_shape[-2:]))
        return bb.emit(relax.op.reshape(matmul_in_dtype(importer, a3, b3), a_shape[:-1] + [b_shape[-1]]))
    return matmul_in_dtype(importer, a, b)


def _rows_product(importer, a, b, bias=None) -> Any:
    """a @ b (b a matrix) with a's leading dims flattened into rows and restored after, the bias
    added to the 2-D product: torch's decomposition of linear and of matmul by a matrix."""
    from tvm import relax

    bb = importer.block_builder
    shape = list(a.ty.shape)
    if len(shape) > 2:
        a = bb.emit(relax.op.reshape(a, [product_of(shape[:-1]), shape[-1]]))
    product = matmul_in_dtype(importer, a, b)
    if bias is not None:
        product = bb.emit(relax.op.add(bias, product))
    if len(shape) > 2:
        product = bb.emit(relax.op.reshape(product, shape[:-1] + [b.ty.shape[-1]]))
    return product


def _addmm(node: fx.Node, importer) -> Any:
    """beta·bias + alpha·(a @ b) in the inputs' dtype: the stock addmm added a float32 product to a
    float64 bias, which Relax refuses (linear layers of float64 models)."""
    from tvm import relax

    bias, a, b = (importer.env[x] for x in node.args[:3])
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    dtype = str(a.ty.dtype)
    product = matmul_in_dtype(importer, a, b)
    if alpha != 1:
        product = importer.block_builder.emit(relax.op.multiply(product, relax.const(alpha, dtype)))
    if beta != 1:
        bias = importer.block_builder.emit(relax.op.multiply(bias, relax.const(beta, dtype)))
    return importer.block_builder.emit(relax.op.add(bias, product))


def _linear(node: fx.Node, importer) -> Any:
    """linear as its decomposition would give it (x @ wᵀ + b over flattened rows, in the inputs'
    dtype), so an undecomposed program imports to the same Relax and kernels as a decomposed one.
    The stock converter hard-codes a float32 output."""
    from tvm import relax

    x, weight = importer.env[node.args[0]], importer.env[node.args[1]]
    bias = importer.env[node.args[2]] if len(node.args) > 2 and node.args[2] is not None else None
    return _rows_product(importer, x, importer.block_builder.emit(relax.op.permute_dims(weight, [1, 0])), bias)


def _grouped_mm(node: fx.Node, importer) -> Any:
    """A mixture-of-experts layer's grouped product (`transformers::grouped_mm_fallback`, a loop
    over experts in eager): rows sorted by expert, `offs` the cumulative row count of each expert,
    row s multiplied by the matrix of the expert whose group holds it; rows past the last group
    are zeros, as the loop leaves them. One kernel whose reduction reads the row's expert matrix,
    no matrix copied per row."""
    x, weight = importer.env[node.args[0]], importer.env[node.args[1]]
    offsets = importer.env[node.args[2] if len(node.args) > 2 else node.kwargs["offs"]]
    return importer.block_builder.emit_te(_grouped_product, x, weight, offsets, primfunc_name_hint="grouped_matmul")


def _grouped_product(x, weight, offsets):
    from tvm import te, tirx

    rows, depth = x.shape
    experts, _, columns = weight.shape
    group = te.reduce_axis((0, experts), name="group")
    expert = te.compute((rows,), lambda s: te.sum(tirx.Select(offsets[group].astype("int64") <= s, 1, 0).astype("int64"),
                                                  axis=group), name="expert")
    k = te.reduce_axis((0, depth), name="k")
    last = tirx.IntImm("int64", int(experts) - 1)
    product = te.compute((rows, columns), lambda s, o: te.sum(
        x[s, k].astype(x.dtype) * weight[tirx.min(expert[s], last), k, o], axis=k), name="grouped_product")
    return te.compute((rows, columns), lambda s, o: tirx.Select(expert[s] <= last, product[s, o],
                                                               tirx.const(0, x.dtype)), name="grouped_matmul")


CONVERTERS: dict[str, Callable[..., Any]] = {
    "grouped_mm_fallback.default": _grouped_mm,
    **{name: _matmul for name in ("matmul.default", "mm.default", "bmm.default")},
    "addmm.default": _addmm,
    "linear.default": _linear,
}
