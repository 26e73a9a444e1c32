"""Graph statistics: what each pass changed, in the units users care about."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

aten = torch.ops.aten


def op_name(node: fx.Node) -> str:
    """`aten.conv2d`, without the overload: the name users and reports show."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}"
    return getattr(target, "__name__", str(target))


def _size(dim: Any) -> int:
    """A concrete size: symbolic dims count at the size the graph was captured with."""
    if isinstance(dim, int):
        return dim
    hint = getattr(dim.node, "hint", None)
    return int(hint) if hint is not None else 1


def _numel(value: Any) -> int:
    return math.prod(_size(d) for d in value.shape)


def _shape(node: Any) -> list[int]:
    return [_size(d) for d in node.meta["val"].shape]


def _conv_flops(node: fx.Node, weight_arg: int = 1) -> int:
    weight = _shape(node.args[weight_arg])
    return 2 * _numel(node.meta["val"]) * math.prod(weight[1:])


def _linear_flops(node: fx.Node, weight_arg: int = 1) -> int:
    return 2 * _numel(node.meta["val"]) * _shape(node.args[weight_arg])[-1]


def _matmul_flops(node: fx.Node) -> int:
    return 2 * _numel(node.meta["val"]) * _shape(node.args[0])[-1]


def _addmm_flops(node: fx.Node) -> int:
    return 2 * _numel(node.meta["val"]) * _shape(node.args[1])[-1]


def _attention_flops(node: fx.Node) -> int:
    q, k = _shape(node.args[0]), _shape(node.args[1])
    # QK^T and (softmax)V, each 2*L*S*E per head.
    return 4 * math.prod(q[:-1]) * k[-2] * q[-1]


FLOP_COUNTERS: dict[str, Callable[[fx.Node], int]] = {
    "aten.conv2d": _conv_flops,
    "aten.conv1d": _conv_flops,
    "aten.convolution": _conv_flops,
    "aten.linear": _linear_flops,
    "aten.matmul": _matmul_flops,
    "aten.mm": _matmul_flops,
    "aten.bmm": _matmul_flops,
    "aten.addmm": _addmm_flops,
    "aten.scaled_dot_product_attention": _attention_flops,
    # Kiln's integer ops (x, zero point, weight, ...): integer multiply-adds, counted alike
    "kiln.qconv2d": lambda node: _conv_flops(node, weight_arg=2),
    "kiln.qlinear": lambda node: _linear_flops(node, weight_arg=2),
}


@dataclass(frozen=True)
class GraphStats:
    """Node counts by op, weights (count and bytes) and FLOPs of the compute-heavy ops."""

    ops: Counter = field(default_factory=Counter)
    params: int = 0
    param_bytes: int = 0
    flops: int = 0

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())

    @classmethod
    def of(cls, graph) -> "GraphStats":
        ops: Counter = Counter()
        flops = 0
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            name = op_name(node)
            ops[name] += 1
            counter = FLOP_COUNTERS.get(name)
            if counter is not None and "val" in node.meta:
                flops += counter(node)
        tensors = {id(t): t for t in graph.constants().values() if isinstance(t, torch.Tensor)}
        params = sum(t.numel() for t in tensors.values())
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return cls(ops, params, nbytes, flops)

    def summary(self) -> str:
        top = ", ".join(f"{name}×{count}" for name, count in self.ops.most_common(8))
        return (
            f"{self.nodes} ops, {self.params:,} params ({format_bytes(self.param_bytes)}), "
            f"{format_flops(self.flops)}\n  ops: {top}"
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_flops(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.2f} {unit}FLOP"
        n /= 1000
    raise AssertionError("unreachable")
