"""ATen arguments TVM's importer drops, expressed before import with ops it reads; and the ones
no rewrite expresses, refused by name.

The importer's converters read the arguments that matter in the common case and drop the rest
without a word: `add(x, y, alpha=2)` became x + y, `elu`'s `scale` (SELU) was lost, `softmax`'s
`dtype`, `native_layer_norm`'s mean and rstd outputs, batch norm's `training`, the float result
of a pointwise op on integers. Each rewrite
here is a table entry: the ATen overload, and a function that rewrites one node with torch ops
(torch's own semantics, type promotion included) or returns None when the node needs nothing.
`LIMITS` names what cannot be expressed: a node that uses it is an UnsupportedOpError that
says which argument. PyTorch's OpInfo samples (kiln/testing/opinfo.py) are what find new entries.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode

from kiln.errors import UnsupportedOpError
from kiln.ir.source import model_source

aten = torch.ops.aten


def argument(node: fx.Node, name: str) -> Any:
    """The value of the argument `name` of an ATen node: given positionally, by keyword, or its default."""
    for position, schema_argument in enumerate(node.target._schema.arguments):
        if schema_argument.name == name:
            if position < len(node.args) and not schema_argument.kwarg_only:
                return node.args[position]
            return node.kwargs.get(name, schema_argument.default_value)
    raise KeyError(name)


class _Emitter:
    """Adds ATen calls before a node, each with the fake value torch's shape propagation would give it."""

    def __init__(self, graph: fx.Graph, before: fx.Node) -> None:
        self.graph, self.before = graph, before
        self.mode = detect_fake_mode([n.meta.get("val") for n in graph.nodes if "val" in n.meta])

    def __call__(self, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        with self.graph.inserting_before(self.before):
            node = self.graph.call_function(target, args, kwargs)
        values = fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
        with self.mode:
            node.meta["val"] = target(*values[0], **values[1])
        node.meta["stack_trace"] = self.before.meta.get("stack_trace")
        node.meta["from_node"] = self.before.meta.get("from_node", [])
        return node


def _scaled_operand(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """add/sub(x, y, alpha=a) as add/sub(x, y·a); rsub(x, y, alpha=a) as rsub(x·a, y)."""
    alpha = argument(node, "alpha")
    if alpha == 1:
        return None
    scaled = 0 if node.target in (aten.rsub.Tensor, aten.rsub.Scalar) else 1
    operands = list(node.args[:2])
    value = operands[scaled]
    operands[scaled] = emit(aten.mul.Tensor, value, alpha) if isinstance(value, fx.Node) else value * alpha
    return emit(node.target, *operands)


def _scaled_elu(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """elu with `scale`/`input_scale` (SELU's decomposition): the importer drops both."""
    x, alpha, scale, input_scale = (argument(node, name) for name in ("self", "alpha", "scale", "input_scale"))
    if scale == 1 and input_scale == 1:
        return None
    return _elu(x, alpha, scale, input_scale, emit)


def _selu(node: fx.Node, emit: _Emitter) -> fx.Node:
    """selu as its elu: TVM's own selu kernel computed max where it means min (4.57 for 1.14)."""
    return _elu(node.args[0], 1.6732632423543772848170429916717, 1.0507009873554804934193349852946, 1, emit)


def _elu(x: fx.Node, alpha: float, scale: float, input_scale: float, emit: _Emitter) -> fx.Node:
    """scale·(relu(x) + alpha·expm1(min(x, 0)·input_scale)): torch's elu."""
    negative = emit(aten.mul.Tensor, emit(aten.clamp_max.default, x, 0), input_scale)
    curve = emit(aten.mul.Tensor, emit(aten.expm1.default, negative), alpha)
    return emit(aten.mul.Tensor, emit(aten.add.Tensor, emit(aten.relu.default, x), curve), scale)


def _softmax_in_dtype(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """softmax/log_softmax(x, dim, dtype=d) as the same op of x converted to d first."""
    if node.target in (aten._softmax.default, aten._log_softmax.default):
        if not argument(node, "half_to_float"):
            return None
        dtype = torch.float32
        plain = aten.softmax.int if node.target is aten._softmax.default else aten.log_softmax.int
    else:
        dtype, plain = argument(node, "dtype"), node.target
        if dtype is None:
            return None
    x = emit(aten._to_copy.default, node.args[0], dtype=dtype)
    return emit(plain, x, argument(node, "dim"))


def _layer_norm_statistics(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """native_layer_norm's mean and rstd outputs, which the importer returns as copies of the
    normalized tensor: computed as torch defines them where something reads them."""
    users = {user.args[1] for user in node.users if user.target is operator.getitem}
    if not users & {1, 2}:
        return None
    x, shape, eps = argument(node, "input"), argument(node, "normalized_shape"), argument(node, "eps")
    axes = list(range(-len(shape), 0))
    normalized = emit(aten.layer_norm.default, x, shape, argument(node, "weight"), argument(node, "bias"), eps)
    return _with_statistics(node, emit, normalized, x, axes, True, eps)


def _with_statistics(node: fx.Node, emit: _Emitter, normalized: fx.Node, values: fx.Node, axes: list[int], keepdim: bool,
                     eps: float) -> fx.Node:
    """`normalized` with the mean and rstd of `values` over `axes` that a native norm returns
    beside it: each getitem user of `node` reads its own of the three."""
    mean = emit(aten.mean.dim, values, axes, keepdim)
    variance = emit(aten.var.correction, values, axes, correction=0, keepdim=keepdim)
    rstd = emit(aten.rsqrt.default, emit(aten.add.Tensor, variance, eps))
    for user in list(node.users):
        user.replace_all_uses_with((normalized, mean, rstd)[user.args[1]])
        user.graph.erase_node(user)
    return normalized


def _batch_statistics(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """batch_norm(training=True) without running statistics (BatchNorm with
    track_running_stats=False, in eval mode too): normalized by the batch's statistics, as the
    importer's no-stats batch norm does; the importer's batch_norm read it as inference."""
    if not argument(node, "training"):
        return None
    x, weight, bias, momentum, eps = (argument(node, name) for name in ("input", "weight", "bias", "momentum", "eps"))
    return emit(operator.getitem, emit(aten._native_batch_norm_legit.no_stats, x, weight, bias, True, momentum, eps), 0)


def _running_statistics(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """instance_norm(use_input_stats=False): normalized by the running statistics it is given,
    which is inference batch norm; the importer normalized by the input's."""
    if argument(node, "use_input_stats"):
        return None
    names = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
    x, weight, bias, mean, var, momentum, eps = (argument(node, name) for name in names)
    return emit(aten.batch_norm.default, x, weight, bias, mean, var, False, momentum, eps, False)


def _clamp(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """clamp with bounds the importer's clip cannot take, as maximum/minimum with tensors of the
    bounds: tensor bounds (its clamp_max reads the bound from a third argument it does not have,
    and clamped nothing), and integers (it fills a missing bound with ±inf, which TVM cannot make
    an integer). clamp_max of floats by a number becomes clamp(x, None, m), a clip."""
    x = node.args[0]
    low = argument(node, "min") if node.target.overloadpacket is not aten.clamp_max else None
    high = argument(node, "max") if node.target.overloadpacket is not aten.clamp_min else None
    dtype = node.meta["val"].dtype
    if dtype.is_floating_point and not isinstance(low, fx.Node) and not isinstance(high, fx.Node):
        return emit(aten.clamp.default, x, None, high) if node.target is aten.clamp_max.default else None
    bound = lambda value: value if isinstance(value, fx.Node) else emit(aten.scalar_tensor.default, value, dtype=dtype)  # noqa: E731
    if low is not None:
        x = emit(aten.maximum.default, x, bound(low))
    if high is not None:
        x = emit(aten.minimum.default, x, bound(high))
    return emit(aten._to_copy.default, x, dtype=dtype) if x.meta["val"].dtype != dtype else x


def _promoted_operands(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """A pointwise op with a floating result of integer operands (true division, reciprocal,
    sqrt, sigmoid of int64): the operands converted to the result's dtype first, as torch's type
    promotion computes it; the importer computed in the integers."""
    result = node.meta["val"].dtype if isinstance(node.meta.get("val"), torch.Tensor) else None
    if result is None or not result.is_floating_point or node.target is aten.where.self:
        return None
    integer = lambda a: isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor) and \
        not a.meta["val"].dtype.is_floating_point and not a.meta["val"].dtype.is_complex and a.meta["val"].dtype != torch.bool  # noqa: E731
    if not any(integer(a) for a in node.args):
        return None
    args = [emit(aten._to_copy.default, a, dtype=result) if integer(a) else a for a in node.args]
    return emit(node.target, *args, **node.kwargs)


def _pointwise_operands(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """A pointwise op's operands as torch reads them: integers promoted where the result is
    floating (`_promoted_operands`); a Python integer where the schema takes a tensor (`perm //
    2`, a wrapped number) made a 0-d tensor of the integer result's dtype, which the importer
    made an int32 constant beside an int64 tensor and refused."""
    promoted = _promoted_operands(node, emit)
    if promoted is not None:
        return promoted
    result = node.meta["val"].dtype if isinstance(node.meta.get("val"), torch.Tensor) else None
    if result is None or result.is_floating_point or result.is_complex or result == torch.bool:
        return None
    schema = node.target._schema.arguments
    wrapped = [position for position, value in enumerate(node.args) if position < len(schema)
               and isinstance(schema[position].type, torch.TensorType) and isinstance(value, int) and not isinstance(value, bool)]
    if not wrapped:
        return None
    args = [emit(aten.scalar_tensor.default, value, dtype=result) if position in wrapped else value
            for position, value in enumerate(node.args)]
    return emit(node.target, *args, **node.kwargs)


def _group_norm_statistics(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """native_group_norm's mean and rstd outputs ([N, group]), which the importer gets wrong:
    computed as torch defines them where something reads them."""
    users = {user.args[1] for user in node.users if user.target is operator.getitem}
    if not users & {1, 2}:
        return None
    x, weight, bias, n, c, hxw, group, eps = node.args
    normalized = emit(aten.group_norm.default, x, group, weight, bias, eps)
    grouped = emit(aten.reshape.default, x, [n, group, -1])
    return _with_statistics(node, emit, normalized, grouped, [2], False, eps)


def _reduction_of_a_scalar(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """A reduction (or an indexed fill) of a 0-d tensor (over dim 0 or -1, or all dims), which the importer's
    converters index by a dimension it lacks (a modulo by zero, a failed check in TVM): the same
    reduction of it made a 1-element vector, its result made 0-d again."""
    x = argument(node, "self")
    if not isinstance(x, fx.Node) or x.meta["val"].dim() != 0:
        return None
    args, kwargs = [], {}
    for schema_argument in node.target._schema.arguments:
        value = argument(node, schema_argument.name)
        if schema_argument.name == "self":
            value = emit(aten.reshape.default, x, [1])
        elif schema_argument.name == "dim" and value is not None:
            value = [0] * len(value) if isinstance(value, (list, tuple)) else 0
        if schema_argument.kwarg_only:
            kwargs[schema_argument.name] = value
        else:
            args.append(value)
    return emit(aten.reshape.default, emit(node.target, *args, **kwargs), [])


def _logical_reduction(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """any/all of a non-boolean tensor as any/all of x != 0: the importer's converter returned
    the input's dtype (float32 where torch gives bool)."""
    x = argument(node, "self")
    if x.meta["val"].dtype == torch.bool:
        return _reduction_of_a_scalar(node, emit)
    return emit(node.target, emit(aten.ne.Scalar, x, 0), *node.args[1:], **node.kwargs)


def _batch_of_one(node: fx.Node, emit: _Emitter) -> fx.Node | None:
    """A convolution of an unbatched input (C, L...), which torch reads as a batch of one and the
    importer refused: the input given a batch dimension, the result's taken off again."""
    x, weight = argument(node, "input"), argument(node, "weight")
    if x.meta["val"].dim() != weight.meta["val"].dim() - 1:
        return None
    args = [emit(aten.unsqueeze.default, x, 0), *node.args[1:]]
    return emit(aten.squeeze.dims, emit(node.target, *args, **node.kwargs), [0])


_REDUCTIONS = (aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default, aten.prod.dim_int,
               aten.argmax.default, aten.argmin.default, aten.logsumexp.default, aten.any.dim, aten.any.dims,
               aten.all.dim, aten.all.dims, aten.var.correction, aten.std.correction, aten.cumsum.default,
               aten.cumprod.default, aten.norm.ScalarOpt_dim, aten.linalg_vector_norm.default, aten.squeeze.dim,
               aten.squeeze.dims, aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)


REWRITES: dict[Any, Callable[[fx.Node, _Emitter], fx.Node | None]] = {
    **{op: _clamp for op in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, aten.clamp.Tensor,
                             aten.clamp_min.Tensor, aten.clamp_max.Tensor)},
    aten.native_group_norm.default: _group_norm_statistics,
    **{op: _reduction_of_a_scalar for op in _REDUCTIONS},
    **{op: _batch_of_one for op in (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.conv1d.padding,
                                    aten.conv2d.padding, aten.conv3d.padding)},
    **{op: _logical_reduction for op in (aten.any.dim, aten.any.dims, aten.all.dim, aten.all.dims)},
    **{op: _scaled_operand for op in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar,
                                      aten.rsub.Tensor, aten.rsub.Scalar)},
    aten.elu.default: _scaled_elu,
    aten.selu.default: _selu,
    **{op: _softmax_in_dtype for op in (aten.softmax.int, aten.log_softmax.int, aten._softmax.default,
                                        aten._log_softmax.default)},
    aten.native_layer_norm.default: _layer_norm_statistics,
    aten.batch_norm.default: _batch_statistics,
    aten.instance_norm.default: _running_statistics,
}


def _not_default(name: str, why: str) -> Callable[[fx.Node], str | None]:
    def check(node: fx.Node) -> str | None:
        value = argument(node, name)
        return f"{name}={value!r} ({why})" if value is not None else None

    return check


def _float_only(why: str) -> Callable[[fx.Node], str | None]:
    def check(node: fx.Node) -> str | None:
        dtype = node.args[0].meta["val"].dtype
        return f"{str(dtype).removeprefix('torch.')} inputs ({why})" if not dtype.is_floating_point else None

    return check


_ANTIALIAS = lambda node: "antialias=True (TVM resizes without an anti-aliasing filter)"  # noqa: E731
_ROUNDING = "TVM's resize rounds integers differently from PyTorch"

def _statistics_read(node: fx.Node) -> str | None:
    read = sorted({user.args[1] for user in node.users if user.target is operator.getitem} & {1, 2})
    return f"its statistics outputs {read} read (TVM computes the normalized tensor alone)" if read else None


# what no rewrite expresses: the node's use of it, in words, or None when it does not use it
LIMITS: dict[Any, Callable[[fx.Node], str | None]] = {
    **{op: _statistics_read for op in (aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
                                       aten._native_batch_norm_legit.no_stats,
                                       aten._native_batch_norm_legit_no_training.default)},
    **{op: _not_default("divisor_override", "TVM's pooling divides by the window it counts")
       for op in (aten.avg_pool2d.default, aten.avg_pool3d.default)},
    **{op: _ANTIALIAS for op in (aten._upsample_bilinear2d_aa.default, aten._upsample_bicubic2d_aa.default,
                                 aten._upsample_bilinear2d_aa.vec, aten._upsample_bicubic2d_aa.vec)},
    **{op: _float_only(_ROUNDING) for op in (aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default,
                                             aten.upsample_bicubic2d.vec, aten.upsample_bicubic2d.default,
                                             aten.upsample_linear1d.vec, aten.upsample_linear1d.default,
                                             aten.upsample_trilinear3d.vec, aten.upsample_trilinear3d.default)},
}


def rewrite_dropped_arguments(graph: fx.Graph) -> None:
    """Every node whose arguments the importer would drop, rewritten with ops it reads; an
    UnsupportedOpError for one that uses what no rewrite expresses. The ops a rewrite emits are
    looked at too (SELU's clamp_max)."""
    pending = list(graph.nodes)
    while pending:
        node = pending.pop(0)
        if node.op != "call_function" or node._erased:
            continue
        limit = LIMITS.get(node.target)
        reason = limit(node) if limit is not None else None
        if reason is not None:
            raise UnsupportedOpError(f"{node.target} with {reason}", node.name, model_source(node), "the TVM backend")
        rewrite = REWRITES.get(node.target)
        if rewrite is None and torch.Tag.pointwise in getattr(node.target, "tags", ()):
            rewrite = _pointwise_operands
        if rewrite is None:
            continue
        before = set(graph.nodes)
        replacement = rewrite(node, _Emitter(graph, node))
        if replacement is not None:
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            pending += [added for added in graph.nodes if added not in before]
