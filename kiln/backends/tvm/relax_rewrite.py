"""Kiln's Relax rewrites as TVM passes: one mutator over every Relax function of a module."""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator


def mutator_pass(name: str, make_mutator: Callable[[tvm.IRModule], PyExprMutator]) -> tvm.transform.Pass:
    """A module pass named `name` that runs `make_mutator(mod)` over each Relax function and
    returns what its block builder built."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def transform(mod: tvm.IRModule, _context) -> tvm.IRModule:
        mutator = make_mutator(mod)
        for global_var, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(global_var, mutator.visit_expr(func))
        return mutator.builder_.get()

    return transform
