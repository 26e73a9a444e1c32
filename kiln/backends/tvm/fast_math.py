"""TVM's FastMathTransform (exp, erf, tanh and softmax as vectorizable polynomials, ~1e-7
relative error, instead of scalar libm calls), over calls to operators only: TVM's own visitor
read `call.op.name` on every call and failed on a call to another function of the module (the
branches of a `torch.cond` with a tensor predicate)."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor
from tvm.relax.transform.fast_math import FastMathCodeGenerator


@expr_functor.mutator
class _OperatorCallsOnly(FastMathCodeGenerator._cls):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if not isinstance(call.op, tvm.ir.Op):
            return PyExprMutator.visit_call_(self, call)
        return FastMathCodeGenerator._cls.visit_call_(self, call)


@tvm.transform.module_pass(opt_level=0, name="FastMath")
class FastMath:
    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        generator = _OperatorCallsOnly(mod)
        for var, function in mod.functions_items():
            if isinstance(function, relax.Function):
                generator.builder_.update_func(var, generator.visit_expr(function))
        return generator.builder_.get()
