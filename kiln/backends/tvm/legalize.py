"""Legalizations Kiln gives TVM 0.27 where its own fail: `full` and `full_like` with an infinite
or NaN fill value (every masked_fill with -inf, a `torch.full(..., inf)`) passed the dtype object
where TOPI reads a string, and failed in LegalizeOps with a TypeError. Registered over TVM's at a
higher level when the TVM backend loads."""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax.transform.legalize_ops.common import _try_convert_to_scalar_const

_ATTRIBUTE = "FLegalize"


def _full(op_name: str, is_like: bool):
    stock = tvm.ir.Op.get(op_name).get_attr(_ATTRIBUTE)

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        fill = _try_convert_to_scalar_const(call.args[1], python_native=True)
        shape = call.args[0].ty.shape if is_like else call.args[0]
        if not isinstance(shape, relax.ShapeExpr):  # a shape known only at run time: TVM's own
            return stock(bb, call)
        return bb.call_te(topi.full, shape.values, str(call.ty.dtype), fill, primfunc_name_hint="full")

    return legalize


for _op, _is_like in (("relax.full", False), ("relax.full_like", True)):
    tvm.ir.register_op_attr(_op, _ATTRIBUTE, _full(_op, _is_like), level=11)
