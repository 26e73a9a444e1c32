"""Weights as parameters of the compiled program, kept beside it as one raw file.

A Relax program keeps its constants inside the VM executable, which TVM serializes through its
own stream (~100-250 MB/s) and, in a shared library, as one array through LLVM and the linker:
BERT-base's 414 MB cost seconds to save and more to load. Kiln lifts every tensor constant of
`main`, once the program is lowered, into an extra parameter, so the program holds code alone;
the weights travel as `weights.bin` (runtime/weights_file.py) (each tensor at a 64-byte aligned offset, as TVM wants its
data) with an index, `weights.json`, and are mapped, not copied, when they are loaded
(`bundle_runner.read_weights`, which a board reads them with too).
"""

from __future__ import annotations


import tvm
from tvm import relax



def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[tvm.runtime.Tensor]]:
    """`mod` with `main`'s tensor constants made its trailing parameters, and their values in
    parameter order. Run on the lowered program (after VMShapeLower): the new parameters need no
    shape checks, each is a register the kernels read as they read the constant."""
    main = mod["main"]
    lifter = _ConstantLifter(mod)
    body = lifter.visit_expr(main.body)
    if not lifter.weights:
        return mod, []
    params = [*main.params, *lifter.parameters]
    lifted = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs, main.span)
    functions = dict(mod.functions)
    functions[mod.get_global_var("main")] = lifted
    return tvm.IRModule(functions, attrs=mod.attrs), lifter.weights


@relax.expr_functor.mutator
class _ConstantLifter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.parameters: list[relax.Var] = []
        self.weights: list[tvm.runtime.Tensor] = []
        self._lifted: dict[tvm.ir.expr.GenericConst, relax.Var] = {}

    def visit_generic_const_(self, constant):
        if not isinstance(constant.value, tvm.runtime.Tensor):
            return constant
        if constant not in self._lifted:
            value = constant.value
            parameter = relax.Var(f"weight{len(self.parameters)}", relax.TensorType(value.shape, value.dtype))
            self._lifted[constant] = parameter
            self.parameters.append(parameter)
            self.weights.append(constant.value)
        return self._lifted[constant]
