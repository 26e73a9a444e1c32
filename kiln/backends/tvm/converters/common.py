"""The importer's own converters, reached from Kiln's, and what several families share."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx


def stock_converter(importer, name: str) -> Callable[[fx.Node], Any]:
    """The importer's own converter for `name`, under Kiln's wrappers (its table built once per import)."""
    stock = getattr(importer, "_kiln_stock_converters", None)
    if stock is None:
        stock = importer._kiln_stock_converters = importer.create_convert_map()
    return stock[name]


def in_input_dtype(name: str):
    """The importer's own converter with the result cast back to the input's dtype: its convolutions
    hard-code float32 outputs (fp16 convolutions came out float32; they keep float32 accumulation)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        result = stock_converter(importer, name)(node)
        dtype = str(importer.env[node.args[0]].ty.dtype)
        if str(result.ty.dtype) != dtype:
            return importer.block_builder.emit(relax.op.astype(result, dtype))
        return result

    return convert


def in_float32(name: str):
    """The importer's converter run on float32 copies of half-precision inputs, the result rounded
    back once: what PyTorch's CPU kernels do for softmax and sums (TVM's own accumulate in the half
    type: fp16 exponent sums drifted by an ulp)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        stock = stock_converter(importer, name)
        x = importer.env[node.args[0]]
        dtype = str(x.ty.dtype)
        if dtype not in ("float16", "bfloat16") or node.kwargs.get("dtype") is not None:
            return stock(node)
        importer.env[node.args[0]] = importer.block_builder.emit(relax.op.astype(x, "float32"))
        try:
            result = stock(node)
        finally:
            importer.env[node.args[0]] = x
        return importer.block_builder.emit(relax.op.astype(result, dtype))

    return convert


def matmul_in_dtype(importer, a, b):
    """a @ b in the inputs' dtype: the importer's converters hard-code float32 outputs, so fp16/bf16
    models came out float32 and float64 ones lost their precision. Half types accumulate in
    float32 and round once, as PyTorch does (fp16 sums drifted by an ulp or two)."""
    from tvm import relax

    dtype = str(a.ty.dtype)
    if dtype in ("float16", "bfloat16"):
        product = importer.block_builder.emit(relax.op.matmul(a, b, out_dtype="float32"))
        return importer.block_builder.emit(relax.op.astype(product, dtype))
    return importer.block_builder.emit(relax.op.matmul(a, b, out_dtype=dtype))


def product_of(dims: list) -> Any:
    total = dims[0]
    for dim in dims[1:]:
        total = total * dim
    return total


def same_dim(x: Any, y: Any) -> bool:
    """Two Relax shape dims known equal (the same constant or the same symbolic expression)."""
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(x, y))
