"""Pack constant matmul and convolution weights into output-channel panels at compile time.

`x @ W` with W (K × N) read NR columns at a time walks W with a stride of N floats per k: one new
cache line, and for wide layers a new page, per multiply-add step. Stored as panels Wp[N/NR, K, NR]
the same walk is sequential. The packing is done once, in numpy, when compiling; the matmul becomes
a TE compute that indexes the panels, and `schedules.py` tiles it like any other reduction. The
panel width is the register tile's (`register_tile.py`), chosen here from the layer's rows, so
each tile reads one panel front to back; the schedule reads it back from the panel's shape.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import tvm
from tvm import relax, te, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from kiln.backends.tvm.cpu import amx, winograd
from kiln.backends.tvm.dlpack import constant_array, tensor_constant
from kiln.backends.tvm.cpu.dot_instructions import AMX_PANEL_WIDTHS, DOT_ANNOTATION, TAPS_ANNOTATION, DotInstruction
from kiln.backends.tvm.cpu.register_tile import VectorUnit, column_lanes, register_tile
from kiln.backends.tvm.converters.quantized import uint8_source
from kiln.backends.tvm.relax_rewrite import mutator_pass

# *_DOT: panels interleaved in groups of reduction steps for a dot-product instruction (int8, bf16)
PACKED_MATMUL, PACKED_MATMUL_DOT, PACKED_CONV2D, PACKED_CONV2D_DOT = "packed_matmul", "packed_matmul_dot", "packed_conv2d", "packed_conv2d_dot"
# the computes reading packed panels: their panels' rank and the axis of the panel width
_PANEL_WIDTH_AXIS = {PACKED_MATMUL: (3, 2), PACKED_MATMUL_DOT: (4, 2), PACKED_CONV2D: (5, 4), PACKED_CONV2D_DOT: (6, 4), winograd.MATMUL: (4, 3)}


def static_extent(extent) -> int | None:
    return int(extent) if isinstance(extent, tvm.tirx.IntImm) else None


def weight_buffer(block: tvm.s_tir.SBlock) -> tvm.tirx.Buffer:
    """The last operand of a reduction x · w: its weights (packed panels, depthwise filters)."""
    return block.reads[-1].source


def packed_panel_width(block: tvm.s_tir.SBlock) -> int | None:
    """The panel width of a compute made here (the register tile it was packed for), or None."""
    rank_axis = _PANEL_WIDTH_AXIS.get(block.name_hint)
    panels = weight_buffer(block)
    if rank_axis is None or len(panels.shape) != rank_axis[0]:
        return None
    return int(panels.shape[rank_axis[1]])


def _convolved(padded, kernel, stride, dilation):
    """Outputs along one axis of a convolution over `padded` inputs (ints or TIR expressions)."""
    return (padded - (kernel - 1) * dilation - 1) // stride + 1


def _product(x_value, weight_value, dot: DotInstruction | None):
    """x·w as `dot` computes it (int32, or float32 from bf16), or as float where there is none."""
    return x_value * weight_value if dot is None else dot.product(x_value, weight_value)


def _block_attributes(dot: DotInstruction | None, taps: tuple[int, int] = (1, 1)) -> dict[str, str] | None:
    """Names the instruction on the compute block, for the schedule, and the kernel taps a tile
    kernel may cover (a stride-1 convolution reads its taps' input rows at fixed offsets)."""
    if dot is None:
        return None
    return {DOT_ANNOTATION: dot.name, **({TAPS_ANNOTATION: f"{taps[0]}x{taps[1]}"} if dot.is_tile and taps != (1, 1) else {})}


def _packed_matmul(x: te.Tensor, panels: te.Tensor, correction: te.Tensor | None = None, dot: DotInstruction | None = None) -> te.Tensor:
    """x @ W with W read from panels [N/NR, K, NR] (float) or [N/NR, K/G, NR, G] (int8 or bf16, groups
    of G reduction steps interleaved for `dot`, `dot_instructions.py`); less `correction` [N] (the zero point's share)."""
    grouped = len(panels.shape) == 4
    width, group = int(panels.shape[2]), int(panels.shape[3]) if grouped else 1
    k = te.reduce_axis((0, x.shape[-1]), name="k")
    shape = [*x.shape[:-1], panels.shape[0] * width]

    def weight(j, k):
        return panels[j // width, k // group, j % width, k % group] if grouped else panels[j // width, k, j % width]

    product = te.compute(
        shape,
        lambda *i: te.sum(_product(x[(*i[:-1], k)], weight(i[-1], k), dot), axis=k),
        name=PACKED_MATMUL_DOT if grouped else PACKED_MATMUL,
        attrs=_block_attributes(dot),
    )
    return _corrected(product, correction)


def _corrected(product: te.Tensor, correction: te.Tensor | None) -> te.Tensor:
    """The integer result less the zero point's share per output channel (an epilogue of the tile)."""
    if correction is None:
        return product
    return te.compute(product.shape, lambda *i: product[i] - correction[i[-1]], name="zero_point_correction")


def _packed_conv2d_nhwc(x: te.Tensor, panels: te.Tensor, strides, padding, dilation, pad_value: int = 0,
                        correction: te.Tensor | None = None, dot: DotInstruction | None = None) -> te.Tensor:
    """NHWC convolution reading weights packed as [O/NR, KH, KW, I, NR] (float) or
    [O/NR, KH, KW, I/G, NR, G] (int8 or bf16, groups of G input channels interleaved for `dot`).
    Integer inputs pad with `pad_value` (uint8 activations: their zero point, real zero)."""
    grouped = len(panels.shape) == 6
    width, group = int(panels.shape[4]), int(panels.shape[5]) if grouped else 1
    top, left, bottom, right = (int(p) for p in padding)
    kh, kw, ci = int(panels.shape[1]), int(panels.shape[2]), int(panels.shape[3]) * group
    extra = ci - int(x.shape[3])  # the zero-weight channels that make the channel count whole groups
    padding_needed = top or left or bottom or right or extra
    padded = topi.nn.pad(x, [0, top, left, 0], [0, bottom, right, extra], pad_value=pad_value, name="pad") if padding_needed else x
    (sh, sw), (dh, dw) = ([int(v) for v in values] for values in (strides, dilation))
    batch, height, width_in, _ = padded.shape
    out_h, out_w = _convolved(height, kh, sh, dh), _convolved(width_in, kw, sw, dw)
    rh, rw, ri = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, ci), "ri")
    read = _strided_pixels(padded, sw) if dot is not None and dot.is_tile and sw > 1 else None

    def pixel(n, h, w, rh, rw, ri):
        if read is not None:  # dilation 1 (`_conv2d`)
            return read[n, h * sh + rh, w + rw // sw, rw % sw * ci + ri]
        return padded[n, h * sh + rh * dh, w * sw + rw * dw, ri]

    def weight(o, rh, rw, ri):
        if grouped:
            return panels[o // width, rh, rw, ri // group, o % width, ri % group]
        return panels[o // width, rh, rw, ri, o % width]

    product = te.compute(
        (batch, out_h, out_w, panels.shape[0] * width),
        lambda n, h, w, o: te.sum(
            _product(pixel(n, h, w, rh, rw, ri), weight(o, rh, rw, ri), dot),
            axis=[rh, rw, ri],
        ),
        name=PACKED_CONV2D_DOT if grouped else PACKED_CONV2D,
        attrs=_block_attributes(dot, (kh, kw) if read is None and (sh, sw, dh, dw) == (1, 1, 1, 1) else (1, 1)),
    )
    return _corrected(product, correction)


def _strided_pixels(padded: te.Tensor, stride: int) -> te.Tensor:
    """The padded input with each `stride` consecutive pixels as one row of `stride` × channels:
    a strided convolution's tap (kh, kw) then reads, for consecutive output pixels w, the rows
    w + kw // stride at column offset (kw % stride) · channels, one fixed stride apart — the
    uniformly strided rows an AMX tile loads. Zero columns make the width a whole number of rows."""
    batch, height, width, channels = (int(d) for d in padded.shape)
    if width % stride:
        padded = topi.nn.pad(padded, [0, 0, 0, 0], [0, 0, -width % stride, 0], name="pad_to_stride")
    return te.compute((batch, height, -(-width // stride), stride * channels),
                      lambda n, h, w, c: padded[n, h, w * stride + c // channels, c % channels], name="strided_pixels")


@mutator
class _Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, unit: VectorUnit, dots: list[DotInstruction]) -> None:
        super().__init__(mod)
        self.unit = unit
        self.integer_dots = [dot for dot in dots if dot.weight == "int8"]
        self.bf16_dots = [dot for dot in dots if dot.weight == "bfloat16"]
        self.packed = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's visitor name
        call = super().visit_call_(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if name == "relax.matmul":
            return self._matmul(call)
        if name == "relax.nn.conv2d":
            return self._conv2d(call)
        return call

    def _bound(self, expr: relax.Expr) -> relax.Expr | None:
        """What a variable is bound to (None for a function parameter); other expressions as they are."""
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    def _dot_operands(self, x: relax.Expr, weight: relax.Expr) -> list[tuple[DotInstruction, relax.Expr, int]]:
        """(instruction, the activations it reads, their zero point: 0 when already taken off) for
        each instruction that could run this integer (or bf16) layer, fastest first."""
        if not isinstance(weight, tvm.ir.expr.Constant):
            return []
        if str(weight.ty.dtype) == "bfloat16" and x.ty.dtype == "bfloat16":
            return [(dot, x, 0) for dot in self.bf16_dots]
        if str(weight.ty.dtype) != "int8" or x.ty.dtype != "int16":
            return []
        source = None if all(dot.subtracts_zero_point for dot in self.integer_dots) else uint8_source(x, self._bound, self.builder_.emit)
        return [(dot, x, 0) if dot.subtracts_zero_point else (dot, *source)
                for dot in self.integer_dots if dot.subtracts_zero_point or source is not None]

    def _panels(self, weight: relax.Expr, rank: int, x_dtype: str, rows: int | None,
                dot: DotInstruction | None = None) -> np.ndarray | torch.Tensor | None:
        """The constant weight as panels of output channels (output channels last), or None;
        `rows`: the output rows the schedule tiles (a matmul's, a convolution's output width).

        Float weights: [..., N] → [N/NR, ..., NR]. Integer layers (int8 weights, int32 results) for
        `dot`: [..., K, N] → [N/NR, ..., K/G, NR, G], the reduction in interleaved groups of G, the
        layout its instruction reads."""
        if not isinstance(weight, tvm.ir.expr.Constant):
            return None
        array = constant_array(weight)
        if array.ndim != rank or column_lanes(array.shape[-1], self.unit.lanes) is None:
            return None
        steps = int(np.prod(array.shape[:-1]))  # the reduction: all but the output channels
        if array.dtype == np.float32 and x_dtype == "float32":
            width = register_tile(array.shape[-1], rows, steps, self.unit).columns
            split = torch.from_numpy(array).reshape(*array.shape[:-1], array.shape[-1] // width, width)
            # in torch: one copy into memory TVM can take as it is (numpy's is not aligned for it)
            return split.movedim(-2, 0).contiguous()
        if dot is not None and str(array.dtype) == dot.weight and array.shape[-1] % dot.lanes == 0:
            group = dot.group
            if array.shape[-2] % group and rank == 4:  # channels not whole groups (an RGB stem): zero channels more
                array = np.pad(array, [(0, 0), (0, 0), (0, -array.shape[-2] % group), (0, 0)])
            if array.shape[-2] % group:
                return None
            if dot.is_tile:  # whole tiles only: rows in tiles of 7-16, reductions of 64 bytes per tap
                if amx.tile_rows(rows) is None or array.shape[-2] % dot.steps_multiple:
                    return None
                width = next(w for w in AMX_PANEL_WIDTHS if array.shape[-1] % w == 0)
            else:
                width = register_tile(array.shape[-1], rows, int(np.prod(array.shape[:-1])), self.unit, lanes=dot.lanes).columns
            *outer, depth, columns = array.shape
            split = array.reshape(*outer, depth // group, group, columns // width, width)
            # [..., K/G, G, N/NR, NR] → [N/NR, ..., K/G, NR, G]
            moved = np.moveaxis(split, -2, 0)
            return np.ascontiguousarray(np.swapaxes(moved, -1, -2))
        return None

    @staticmethod
    def _correction(weight: relax.Expr, zero_point: int, dot: DotInstruction | None) -> relax.Expr | None:
        """(zero_point − what `dot` takes off itself) · Σ w per output channel (the last axis), as
        an int32 constant; None for 0."""
        zero_point -= dot.activation_offset if dot is not None and not dot.subtracts_zero_point else 0
        if not zero_point:
            return None
        array = constant_array(weight).astype(np.int64)
        return relax.const((zero_point * array.reshape(-1, array.shape[-1]).sum(0)).astype(np.int32))

    def _conv2d(self, call: relax.Call) -> relax.Expr:
        x, weight = call.args
        attrs = call.attrs
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
        if layouts != ("NHWC", "HWIO", "NHWC") or int(attrs.groups) != 1:
            return call
        if attrs.out_dtype not in ("", "float32", "int32"):
            return call
        strides, padding, dilation = ([int(v) for v in values] for values in (attrs.strides, attrs.padding, attrs.dilation))
        rows = _output_width(x, weight, strides, padding, dilation)
        for dot, source, zero_point in self._dot_operands(x, weight):
            if dot.is_tile and (dilation != [1, 1] or strides != [1, 1] and int(weight.ty.shape[1]) == 1):
                # a tile's rows are pixels one stride apart (`_strided_pixels`); a strided 1×1
                # convolution fails to tensorize over them (TVM 0.27: an undefined block variable)
                continue
            panels = self._panels(weight, 4, x.ty.dtype, rows, dot)
            if panels is not None:
                self.packed += 1
                return self.builder_.call_te(
                    partial(_packed_conv2d_nhwc, dot=dot), source, tensor_constant(panels), strides, padding, dilation,
                    zero_point, self._correction(weight, zero_point, dot), primfunc_name_hint="packed_conv2d",
                )
        x, weight = self._widened(x, weight)
        if self._winograd_applies(x, weight, strides, dilation):
            self.packed += 1
            *_, channels_in, channels_out = (int(d) for d in weight.ty.shape)
            tile = register_tile(channels_out, winograd.tile_count(x.ty.shape, padding), channels_in, self.unit)
            panels = winograd.transformed_panels(constant_array(weight), tile.columns)
            return self.builder_.call_te(winograd.conv2d_nhwc, x, tensor_constant(panels), padding, primfunc_name_hint="winograd_conv2d")
        panels = self._panels(weight, 4, x.ty.dtype, rows)
        if panels is None:
            return call
        self.packed += 1
        return self.builder_.call_te(_packed_conv2d_nhwc, x, tensor_constant(panels), strides, padding, dilation,
                                     primfunc_name_hint="packed_conv2d")

    def _winograd_applies(self, x: relax.Expr, weight: relax.Expr, strides: list[int], dilation: list[int]) -> bool:
        """Float 3×3 stride-1 convolutions with constant weights, vector-wide channels and a static
        input shape (a dynamic batch would leave the matmuls' rows, the tiles, unknown to the
        schedule, which then cannot tile them; the direct convolution tiles image rows)."""
        if not isinstance(weight, tvm.ir.expr.Constant) or x.ty.dtype != "float32" or str(weight.ty.dtype) != "float32":
            return False
        if not all(isinstance(d, tvm.tirx.IntImm) for d in x.ty.shape):
            return False
        shape = [int(d) for d in weight.ty.shape]
        return winograd.applies(shape, strides, dilation) and column_lanes(shape[3], self.unit.lanes) is not None

    def _matmul(self, call: relax.Call) -> relax.Expr:
        x, weight = call.args
        rows = static_extent(x.ty.shape[-2]) if len(x.ty.shape) > 1 else 1
        for dot, source, zero_point in self._dot_operands(x, weight):
            panels = self._panels(weight, 2, x.ty.dtype, rows, dot)
            if panels is not None:
                self.packed += 1
                return self.builder_.call_te(partial(_packed_matmul, dot=dot), source, tensor_constant(panels),
                                             self._correction(weight, zero_point, dot), primfunc_name_hint="packed_matmul")
        if not isinstance(weight, tvm.ir.expr.Constant) and x.ty.dtype == weight.ty.dtype == "bfloat16":
            # two activations (attention's scores and values): float32 from their bf16 values
            product = relax.op.matmul(*(self.builder_.emit(relax.op.astype(value, "float32")) for value in (x, weight)), out_dtype="float32")
            return product if call.ty.dtype == "float32" else relax.op.astype(self.builder_.emit(product), call.ty.dtype)
        x, weight = self._widened(x, weight)
        panels = self._panels(weight, 2, x.ty.dtype, rows)
        if panels is None:
            return call
        self.packed += 1
        return self.builder_.call_te(_packed_matmul, x, tensor_constant(panels), primfunc_name_hint="packed_matmul")

    def _widened(self, x: relax.Expr, weight: relax.Expr) -> tuple[relax.Expr, relax.Expr]:
        """A bf16 layer no bf16 unit takes (no AMX, or a shape its tiles do not fit) computes in
        float32 from its bf16-rounded inputs and weights: the float kernels, not scalar bf16
        arithmetic that TVM widens value by value. Other layers as they are."""
        if not isinstance(weight, tvm.ir.expr.Constant) or str(weight.ty.dtype) != "bfloat16" or x.ty.dtype != "bfloat16":
            return x, weight
        return self.builder_.emit(relax.op.astype(x, "float32")), relax.const(weight.value.numpy().astype(np.float32))


def _output_width(x: relax.Expr, weight: relax.Expr, strides: list[int], padding: list[int], dilation: list[int]) -> int | None:
    """An NHWC convolution's output width: the rows its schedule tiles."""
    width = static_extent(x.ty.shape[2])
    if width is None:
        return None
    return _convolved(width + padding[1] + padding[3], int(weight.ty.shape[1]), strides[1], dilation[1])


def pack_weights(unit: VectorUnit, dots: list[DotInstruction]) -> tvm.transform.Pass:
    """Relax pass: matmuls by a constant (K × N) and NHWC/HWIO convolutions with constant weights
    read packed panels (output channels a multiple of 4 floats, `column_lanes`); integer layers
    and bf16 ones too, for the first of `dots` (the target's `dot_instructions.py` instructions) that applies."""
    return mutator_pass("PackWeights", lambda mod: _Packer(mod, unit, dots))
