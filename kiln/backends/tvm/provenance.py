"""Which Kiln graph nodes each TVM kernel computes: what the profile and the report name beside
a kernel's time.

The importer names every Relax variable after the Kiln node it came from (kiln/backends/tvm/
lower.py); TVM's passes keep those names up to FuseOps, which groups `call_tir` bindings into
fused functions (named `fused_` + their callees) and renames each group's output `gv`. Reading
the module just before and just after FuseOps recovers every group's nodes: the names of its
inner bindings, and for its `gv` the binding of the same callee and arguments before fusion.
A kernel FuseOps leaves alone is a `call_tir` of `main`, named by its binding (each call's
nodes). A fused function shared by identical layers (its `calls` in the profile) names the
first layer's nodes. Passes after FuseOps (FuseTIR, scheduling) keep the kernels' names.
"""

from __future__ import annotations

from typing import Iterable

import tvm
from tvm import relax


def kernel_sources(before: tvm.IRModule, after: tvm.IRModule, nodes: Iterable[str]) -> dict[str, list[str]]:
    """Kernel (PrimFunc or fused function) name -> the Kiln nodes it computes, in order."""
    known = set(nodes)
    calls_before = [(_callee(b.value), set(_arguments(b.value)), var_name(b.var)) for b in _bindings(before["main"]) if _callee(b.value)]
    sources: dict[str, list[str]] = {}
    for var, function in after.functions.items():
        if isinstance(function, relax.Function) and function.attrs is not None and "Primitive" in function.attrs:
            parameters = {var_name(p) for p in function.params}
            names = []
            for binding in _bindings(function):
                name = var_name(binding.var)
                if name == "gv":  # the group's output: the binding before fusion with its callee and inner arguments
                    callee, inner = _callee(binding.value), set(_arguments(binding.value)) - parameters - {"const"}
                    matches = [before_name for c, arguments, before_name in calls_before if c == callee and inner <= arguments]
                    name = matches[0] if len(matches) == 1 else ""
                names.append(name)
            sources[var.name_hint] = kiln_names(names, known)
    for binding in _bindings(after["main"]):
        callee = _callee(binding.value)
        if callee and not callee.startswith("fused_"):
            sources.setdefault(callee, []).extend(kiln_names([var_name(binding.var)], known))
    return sources


def kiln_names(names: list[str], known: set[str]) -> list[str]:
    """Relax names back to Kiln node names: a name BlockBuilder made unique has digits appended
    ("conv2d1" for a second binding of node "conv2d"); a name no Kiln node has (a variable TVM
    made, "lv3") is dropped. The appended digits can spell another node's name ("conv2d_1" + "1"
    is node "conv2d_11" too): within one kernel, a name that extends one already found by digits
    is read as the same node again (a convolution lowers to several bindings of its name; two
    nodes so named in one kernel are rarer, and a kernel never holds two convolutions)."""
    found: list[str] = []
    for name in names:
        if any(name != earlier and name.startswith(earlier) and name[len(earlier):].isdigit() for earlier in found):
            continue
        while name and name not in known and name[-1].isdigit():
            name = name[:-1]
        if name in known and name not in found:
            found.append(name)
    return found


def _bindings(function: relax.Function) -> list:
    body = function.body
    return [binding for block in getattr(body, "blocks", []) for binding in block.bindings]


def _callee(value) -> str | None:
    if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
        return value.args[0].name_hint
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
        return value.op.name_hint
    return None


def _arguments(value) -> tuple[str, ...]:
    arguments = value.args[1].fields if getattr(value.op, "name", "") == "relax.call_tir" else value.args
    return tuple(var_name(a) if isinstance(a, relax.Var) else "const" for a in arguments)


def var_name(var) -> str:
    return str(getattr(var, "name_hint", None) or var.name)
