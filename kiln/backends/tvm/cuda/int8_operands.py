"""int8 layers on the GPU's tensor cores: uint8 activations as signed int8 operands.

Kiln's integer layers multiply `astype(u8, int16) − zero_point` by int8 weights
(kiln/backends/tvm/converters/quantized.py): int16 operands, which no tensor-core instruction takes (mma's
integer forms multiply 8-bit values). Shifted by 128 a uint8 value is an int8 one, exactly, and
u − zp = (u − 128) − (zp − 128), so x · W = (u − 128) · W − (zp − 128) · ΣW. This pass rewrites
each such convolution (groups 1) and matmul by a constant weight into int8 × int8 → int32 (a GEMM
`tensor_core.py` puts on the tensor cores) less that correction, one constant per output channel.
A padded convolution pads explicitly with zp − 128, the shifted value of real zero, so the
correction holds at the borders too. The integers are exact: the result is the same int32.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from kiln.backends.tvm.dlpack import constant_array
from kiln.backends.tvm.converters.quantized import is_call, uint8_source
from kiln.backends.tvm.relax_rewrite import mutator_pass

SHIFT = 128  # uint8 − 128 is int8


@mutator
class _SignedOperands(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's visitor name
        call = super().visit_call_(call)
        if is_call(call, "relax.nn.conv2d"):
            return self._conv2d(call)
        if is_call(call, "relax.matmul"):
            return self._matmul(call)
        return call

    def _conv2d(self, call: relax.Call) -> relax.Expr:
        x, weight = call.args
        attrs = call.attrs
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
        if layouts != ("NCHW", "OIHW", "NCHW") or int(attrs.groups) != 1 or attrs.out_dtype != "int32":
            return call
        weights, source = self._int8_weights(weight), self._source(x)
        if weights is None or source is None:
            return call
        values, offset = source
        top, left, bottom, right = (int(p) for p in attrs.padding)
        if top or left or bottom or right:
            values = self.builder_.emit(relax.op.nn.pad(values, [0, 0, 0, 0, top, bottom, left, right], pad_value=offset))
        product = self.builder_.emit(relax.op.nn.conv2d(values, weight, strides=attrs.strides, padding=[0, 0, 0, 0],
                                                        dilation=attrs.dilation, out_dtype="int32"))
        per_channel = weights.reshape(weights.shape[0], -1).sum(1).reshape(1, -1, 1, 1)
        return self._less(product, offset * per_channel)

    def _matmul(self, call: relax.Call) -> relax.Expr:
        x, weight = call.args
        if call.attrs.out_dtype != "int32" or len(weight.ty.shape) != 2:
            return call
        weights, source = self._int8_weights(weight), self._source(x)
        if weights is None or source is None:
            return call
        values, offset = source
        product = self.builder_.emit(relax.op.matmul(values, weight, out_dtype="int32"))
        return self._less(product, offset * weights.sum(0))

    def _source(self, x: relax.Expr) -> tuple[relax.Expr, int] | None:
        """(the activations as int8, u − 128; the zero point less 128) when x is uint8 less its
        zero point, else None."""
        if x.ty.dtype != "int16":
            return None
        found = uint8_source(x, self._bound, self.builder_.emit)
        if found is None:
            return None
        values, zero_point = found
        widened = self.builder_.emit(relax.op.astype(values, "int16"))
        shifted = self.builder_.emit(relax.op.subtract(widened, relax.const(SHIFT, "int16")))
        return self.builder_.emit(relax.op.astype(shifted, "int8")), zero_point - SHIFT

    def _int8_weights(self, weight: relax.Expr) -> np.ndarray | None:
        """The int8 constant (int64, for sums) a layer multiplies by, seen through a transpose
        (a linear layer's W.T), or None."""
        bound = self._bound(weight)
        if is_call(bound, "relax.permute_dims"):
            inner = self._int8_weights(bound.args[0])
            return None if inner is None else np.transpose(inner, [int(a) for a in bound.attrs.axes])
        if not isinstance(bound, tvm.ir.expr.Constant) or str(bound.ty.dtype) != "int8":
            return None
        return constant_array(bound).astype(np.int64)

    def _less(self, product: relax.Expr, correction: np.ndarray) -> relax.Expr:
        if not correction.any():
            return product
        return relax.op.subtract(product, relax.const(correction.astype(np.int32)))

    def _bound(self, expr: relax.Expr) -> relax.Expr | None:
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr


def signed_int8_operands() -> tvm.transform.Pass:
    """Relax pass: integer convolutions and matmuls by int8 constants with int8 activations (above)."""
    return mutator_pass("SignedInt8Operands", _SignedOperands)
