"""TVM lowering of Kiln's integer operators (kiln/ir/quantized_ops.py): uint8 × int8 convolutions
and matmuls with int32 accumulation, as Relax integer ops that TVM compiles to integer kernels
(`pack_weights.py` and `schedules.py` turn them into the CPU's dot-product instruction, `dot_instructions.py`)."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from kiln.backends.tvm.converters.common import product_of
from kiln.ir.quantized_ops import reciprocal

# the zero point of dynamic int8 activations carried as uint8: symmetric int8 values + 128
DYNAMIC_ZERO_POINT = 128


def _less_zero_point(values, zero_point: int, importer) -> Any:
    """uint8 activations as int16 less their zero point: `astype(u8, int16) − zero_point`, the
    values the layers multiply (real zero is 0, so convolutions pad with zeros). The uint8 tensor
    underneath stays visible: `pack_weights.py` hands it, with the zero point, to VNNI kernels,
    which read uint8; vpmaddwd kernels take the int16 difference as it is."""
    from tvm import relax

    bb = importer.block_builder
    return bb.emit(relax.op.subtract(bb.emit(relax.op.astype(values, "int16")), relax.const(zero_point, "int16")))


def uint8_source(x, bound: Callable[[Any], Any], emit: Callable[[Any], Any]) -> tuple[Any, int] | None:
    """(the uint8 tensor, its zero point) when the Relax expression x is `astype(u8, int16) −
    zero_point` (`_less_zero_point`), else None: what kernels that read uint8 (VNNI, the GPU's
    int8 tensor cores) start from. `bound(var)` is what a variable is bound to (None for a
    parameter); `emit` binds the transpose a channels-last input adds."""
    import tvm
    from tvm import relax

    value = bound(x)
    if isinstance(value, relax.TupleGetItem) and isinstance(bound(value.tuple_value), relax.Tuple):
        value = bound(bound(value.tuple_value).fields[value.index])  # quantize_dynamic's (values, scales)
    if is_call(value, "relax.permute_dims"):  # channels-last at the graph's input
        inner = uint8_source(value.args[0], bound, emit)
        return None if inner is None else (emit(relax.op.permute_dims(inner[0], value.attrs.axes)), inner[1])
    if not is_call(value, "relax.subtract") or not isinstance(value.args[1], tvm.ir.expr.Constant):
        return None
    widened = bound(value.args[0])
    if not is_call(widened, "relax.astype") or str(widened.args[0].ty.dtype) != "uint8":
        return None
    return widened.args[0], int(value.args[1].value.numpy())


def is_call(expr, op_name: str) -> bool:
    """Whether a Relax expression is a call of the operator `op_name` ("relax.subtract")."""
    import tvm
    from tvm import relax

    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name


def _clamped(x, low: float, high: float) -> Any:
    """clip as maximum/minimum with scalar constants: TVM's ConvertLayout passes those through in
    channels-last layout, while `clip` stops it (an NHWC↔NCHW transpose around every quantize)."""
    from tvm import relax

    dtype = x.ty.dtype
    return relax.op.minimum(relax.op.maximum(x, relax.const(low, dtype)), relax.const(high, dtype))


def _quantize(node: fx.Node, importer) -> Any:
    """round(x · (1 / scale)) + zero_point, saturated to uint8: exactly the IR's uint8 values, carried
    as uint8 between kernels (pooled as they are; layers take off the zero point, `_activations`)."""
    from tvm import relax

    x, scale, zero_point = importer.env[node.args[0]], node.args[1], node.args[2]
    bb = importer.block_builder
    scaled = relax.op.multiply(x, relax.const(reciprocal(scale), x.ty.dtype))
    rounded = relax.op.add(relax.op.round(scaled), relax.const(zero_point, x.ty.dtype))
    return bb.emit(relax.op.astype(_clamped(bb.emit(rounded), 0.0, 255.0), "uint8"))


def _dequantize(node: fx.Node, importer) -> Any:
    """(x − zero_point) · scale in float32: inside the kernel of the float op that reads it."""
    from tvm import relax

    x, scale, zero_point = importer.env[node.args[0]], node.args[1], node.args[2]
    less = relax.op.subtract(relax.op.astype(x, "float32"), relax.const(float(zero_point), "float32"))
    return importer.block_builder.emit(relax.op.multiply(less, relax.const(scale, "float32")))


def _activations(node: fx.Node, importer) -> Any:
    """An integer layer's input less its zero point (int16): static uint8 values widened here,
    dynamic ones arrive so (`_quantize_dynamic`)."""
    x = importer.env[node.args[0]]
    return _less_zero_point(x, node.args[1], importer) if x.ty.dtype == "uint8" else x


def _quantize_dynamic(node: fx.Node, importer) -> Any:
    """Symmetric int8 per row, carried as uint8 + 128 (what VNNI reads) less that offset."""
    from tvm import relax

    x = importer.env[node.args[0]]
    bb = importer.block_builder
    dtype = x.ty.dtype
    row_max = relax.op.max(relax.op.abs(x), axis=-1, keepdims=True)
    scale = bb.emit(relax.op.divide(relax.op.maximum(row_max, relax.const(1e-8, dtype)), relax.const(127.0, dtype)))
    symmetric = _clamped(bb.emit(relax.op.round(relax.op.divide(x, scale))), -127.0, 127.0)
    values = bb.emit(relax.op.astype(relax.op.add(symmetric, relax.const(float(DYNAMIC_ZERO_POINT), dtype)), "uint8"))
    return bb.emit(relax.Tuple([_less_zero_point(values, DYNAMIC_ZERO_POINT, importer), scale]))


def _qconv2d(node: fx.Node, importer) -> Any:
    from tvm import relax

    # the input less its zero point: plain zero padding, no correction
    x, weight = _activations(node, importer), importer.env[node.args[2]]
    stride, padding, dilation, groups = node.args[3], node.args[4], node.args[5], node.args[6]
    return importer.block_builder.emit(relax.op.nn.conv2d(x, weight, stride, padding, dilation, groups, out_dtype="int32"))


def _qlinear(node: fx.Node, importer) -> Any:
    from tvm import relax

    x, weight = _activations(node, importer), importer.env[node.args[2]]
    return importer.block_builder.emit(relax.op.matmul(x, relax.op.permute_dims(weight, [1, 0]), out_dtype="int32"))


# output columns per weight panel. A prompt's matmul reads the widened panel with a register tile
# of this width: a tile spanning two panels read them as split vectors (the 100M Llama's int8
# prefill 310 ms with 16-wide panels, 91 ms with 32). A decode step's GEMV streams more panels at
# once with 16 (int8 decode ~10% faster than with 32, same run).
PANEL = {"rows": 32, "direct": 16}


def _stored_integer(load, column, bits: int, dtype: str):
    """The weight-only integer at `column` as `dtype`: `load(c)` reads stored byte c; int4 values
    sit two to a byte (low nibble first) with an offset of 8 (kiln/ir/quantized_ops.py)."""
    from tvm import te

    if bits == 8:
        return load(column).astype(dtype)
    # shifted as int32: x86 has no byte-lane shifts, so a uint8 shift is widened, shifted and narrowed again
    nibble = (load(column // 2).astype("int32") >> ((column % 2) * 4).astype("int32")) & te.const(15, "int32")
    return nibble.astype(dtype) - te.const(8.0, dtype)


DIRECT_ROWS = 8  # up to this many rows (a decode step's batch), weights are widened in registers


def _weight_only_matmul(x, panels, scales, bits: int):
    """x [M, K] @ dequantized weightᵀ in one TIR function. The integer weight arrives in panels
    [N/P, K(/2 for int4), P] and its scales as [groups, N] (both rearranged at build time). The
    function also takes x, so FoldConstant cannot turn the integer bytes back into float constants:
    the module keeps the small weights.

    For a few rows (decoding: one token per sequence) each weight is used once or a few times, so
    it is widened where it is used, in registers, and the kernel streams the integer bytes: decoding
    is bound by the bytes read. For more rows (a prompt) widening is a contiguous, vectorized pass
    that writes each column block's float panel [K, P] into cache once for all row tiles."""
    from tvm import te, tirx

    rows, depth = x.shape
    count, _, width = panels.shape
    group = depth // scales.shape[0]

    def widened(jo, kk, ji):
        value = _stored_integer(lambda stored: panels[jo, stored, ji], kk, bits, x.dtype)
        return value * scales[kk // group, jo * width + ji].astype(x.dtype)

    if isinstance(rows, (int, tirx.IntImm)) and int(rows) <= DIRECT_ROWS:
        if bits == 8:
            k = te.reduce_axis((0, depth), name="k")
            return te.compute((rows, count * width), lambda i, j: te.sum(x[i, k] * widened(j // width, k, j % width), axis=k),
                              name="linear_weight_only")
        # int4: one step per byte, both nibbles, so the shifts are constants and every lane's the same
        pair = te.reduce_axis((0, depth // 2), name="k")

        def pairs(i, j):
            byte = panels[j // width, pair, j % width].astype("int32")
            low = (byte & 15).astype(x.dtype) - te.const(8.0, x.dtype)
            high = (byte >> 4).astype(x.dtype) - te.const(8.0, x.dtype)
            scale = scales[pair * 2 // group, j].astype(x.dtype)
            return te.sum((x[i, pair * 2] * low + x[i, pair * 2 + 1] * high) * scale, axis=pair)

        return te.compute((rows, count * width), pairs, name="linear_weight_only")
    k = te.reduce_axis((0, depth), name="k")
    panel = te.compute((count, depth, width), widened, name="widened_weight")
    return te.compute((rows, count * width), lambda i, j: te.sum(x[i, k] * panel[j // width, k, j % width], axis=k), name="linear_weight_only")


def _linear_weight_only(node: fx.Node, importer) -> Any:
    from tvm import relax, tirx

    x, weight, scales = (importer.env[a] for a in node.args[:3])
    bits, bias = node.args[3], node.args[4] if len(node.args) > 4 else None
    bb = importer.block_builder
    shape = list(x.ty.shape)  # leading dims may be symbolic (a prompt's length)
    out_features, stored = (int(d) for d in weight.ty.shape)
    rows = product_of(shape[:-1])
    direct = isinstance(rows, (int, tirx.IntImm)) and int(rows) <= DIRECT_ROWS
    width = next(w for w in (PANEL["direct" if direct else "rows"], 16, 8, 1) if out_features % w == 0)
    # constant rearrangements of integer constants: FoldConstant does them once, still integer
    panels = bb.emit(relax.op.permute_dims(relax.op.reshape(weight, [out_features // width, width, stored]), [0, 2, 1]))
    flat = bb.emit(relax.op.reshape(x, [rows, shape[-1]]))
    result = bb.emit_te(_weight_only_matmul, flat, panels, bb.emit(relax.op.permute_dims(scales, [1, 0])), bits)
    if bias is not None:
        result = bb.emit(relax.op.add(result, importer.env[bias]))
    return bb.emit(relax.op.reshape(result, [*shape[:-1], out_features]))


def _widened_rows(rows, scales, bits: int):
    """[n, columns] int8 (or [n, columns/2] packed int4) rows times their group scales → float32."""
    from tvm import te

    count, stored = rows.shape
    columns = stored * 2 if bits == 4 else stored
    group = columns // scales.shape[1]

    def element(i, c):
        return _stored_integer(lambda stored: rows[i, stored], c, bits, "float32") * scales[i, c // group]

    return te.compute((count, columns), element, name="embedding_weight_only")


def _embedding_weight_only(node: fx.Node, importer) -> Any:
    from tvm import relax

    weight, scales, bits, indices = importer.env[node.args[0]], importer.env[node.args[1]], node.args[2], importer.env[node.args[3]]
    bb = importer.block_builder
    index_shape = list(indices.ty.shape)
    flat = bb.emit(relax.op.reshape(indices, [product_of(index_shape)]))
    # "clip": the indices are guarded (index_guard.py), and a "fast" take makes TVM warn at every build
    rows = bb.emit(relax.op.take(weight, flat, axis=0, mode="clip"))
    row_scales = bb.emit(relax.op.take(scales, flat, axis=0, mode="clip"))
    widened = bb.emit_te(_widened_rows, rows, row_scales, bits)
    columns = int(weight.ty.shape[1]) * (2 if bits == 4 else 1)
    return bb.emit(relax.op.reshape(widened, index_shape + [columns]))


CONVERTERS: dict[str, Callable[..., Any]] = {
    "embedding_weight_only.default": _embedding_weight_only,
    "linear_weight_only.default": _linear_weight_only,
    "dequantize.default": _dequantize,
    "quantize.default": _quantize,
    "qconv2d.default": _qconv2d,
    "qlinear.default": _qlinear,
    "quantize_dynamic.default": _quantize_dynamic,
}
