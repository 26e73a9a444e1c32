"""Weight layout changes (transposes, reshapes, casts of constants) computed once, in torch.

ConvertLayout and the linear layers' W.T leave a `permute_dims` of a constant weight per layer.
TVM's FoldConstant evaluates each one by building and running a TIR function through LLVM: a
third of a ResNet-18 compile (3.3 of 11 s) and half of MobileNetV2's went there. The same
transposes in torch, on the constants' own memory, take milliseconds. What this pass leaves,
TVM's FoldConstant still folds.
"""

from __future__ import annotations

from typing import Callable

import torch
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from kiln.backends.tvm.dlpack import constant_tensor, tensor_constant
from kiln.backends.tvm.relax_rewrite import mutator_pass


def _permute_dims(value: torch.Tensor, call: relax.Call) -> torch.Tensor:
    axes = call.attrs.axes
    return value.permute(*reversed(range(value.dim())) if axes is None else [int(axis) for axis in axes])


def _reshape(value: torch.Tensor, call: relax.Call) -> torch.Tensor | None:
    shape = call.ty.shape
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return value.reshape([int(d) for d in shape])


# torch rounds float32 → bfloat16 and float → small integers differently from TVM: those stay TVM's
_EXACT_CASTS = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32, "int64": torch.int64}


def _astype(value: torch.Tensor, call: relax.Call) -> torch.Tensor | None:
    dtype = _EXACT_CASTS.get(str(call.attrs.dtype))
    return value.to(dtype) if dtype is not None else None


_FOLDS: dict[str, Callable[[torch.Tensor, relax.Call], torch.Tensor | None]] = {
    "relax.permute_dims": _permute_dims,
    "relax.reshape": _reshape,
    "relax.astype": _astype,
}


@mutator
class _WeightFolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.folded = 0

    def _constant(self, expr: relax.Expr) -> tvm.ir.expr.Constant | None:
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        return expr if isinstance(expr, tvm.ir.expr.Constant) else None

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's visitor name
        call = super().visit_call_(call)
        fold = _FOLDS.get(call.op.name) if isinstance(call.op, tvm.ir.Op) else None
        constant = self._constant(call.args[0]) if fold is not None else None
        if constant is None:
            return call
        folded = fold(constant_tensor(constant), call)
        if folded is None:
            return call
        self.folded += 1
        return tensor_constant(folded)


def fold_weight_layouts() -> tvm.transform.Pass:
    """Relax pass: `permute_dims`/`reshape`/`astype` of constants (and chains of them) replaced
    by the constant they compute, evaluated in torch."""

    return tvm.transform.Sequential([mutator_pass("FoldWeightLayouts", _WeightFolder), relax.transform.DeadCodeElimination()])
