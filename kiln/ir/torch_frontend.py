"""PyTorch → Kiln IR, through `torch.export`."""

from __future__ import annotations

import contextlib
import inspect
import operator
from typing import Any, Iterator, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from kiln.errors import FrontendError, KilnError
from kiln.ir.graph import ConstantInput, Graph
from kiln.ir.inference_only import refuse_training_mode, refuse_training_ops
from kiln.ir.source import where
from kiln.ir.transformers_caches import is_transformers_model, register_cache_pytrees

BATCH = "batch"


def from_torch(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    dynamic_batch: bool = False,
    dynamic_shapes: Any = None,
) -> Graph:
    """Capture `model` in inference mode.

    `dynamic_shapes` is torch.export's own spelling (per argument name or position, a dict
    {axis: torch.export.Dim("seq", max=512)} for each tensor), so one compiled module serves every
    size of those dims; the dims keep the names of their `Dim`s. `dynamic_batch=True` is the
    short form for dim 0 of every tensor input as one size named "batch". Non-tensor keyword
    arguments (`use_cache=False`) are baked into the capture as constants."""
    refuse_training_mode(model)
    with inference_mode(model):
        return _capture(model, tuple(example_inputs), dict(example_kwargs or {}), dynamic_batch, dynamic_shapes)


@contextlib.contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode while Kiln captures it, and afterwards every submodule back in the
    mode the user left it (a model being trained stays in training mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _capture(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any], dynamic_batch: bool, dynamic_shapes: Any) -> Graph:
    _check_arguments(model, args, kwargs)
    if dynamic_batch:
        if dynamic_shapes is not None:
            raise FrontendError("give dynamic_batch=True or dynamic_shapes, not both (dynamic_batch is dim 0 of every input)")
        batch = torch.export.Dim(BATCH)
        dynamic_shapes = {name: pytree.tree_map(lambda x: {0: batch} if isinstance(x, torch.Tensor) and x.dim() else None, value)
                          for name, value in _bound_arguments(model, args, kwargs).items()}
    names: dict[tuple[int, int], str] = {}
    if dynamic_shapes is not None:
        args, kwargs, names = _dynamic_axes(model, args, kwargs, dynamic_shapes)
    if is_transformers_model(model):
        register_cache_pytrees(model)  # decoder LMs return their KV cache by default
    try:
        with torch.no_grad():
            exported = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes)
    except KilnError:
        raise  # already names the problem (an unsupported ONNX op, say)
    except Exception as error:
        hint = ""
        if "Cache" in str(error) and "not a known type" in str(error):
            hint = " (the model returns a cache object: pass use_cache=False in example_kwargs if you do not need it)"
        raise FrontendError(f"torch.export could not capture {type(model).__name__}{hint}: {error}") from error
    return from_exported_program(exported, names)


def _check_arguments(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Example inputs that cannot be a call of the model's forward, named before export runs it."""
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as error:
        given = ", ".join([f"{len(args)} positional"] + list(kwargs)) if args or kwargs else "none"
        raise FrontendError(
            f"the example inputs do not fit {type(model).__name__}.forward{inspect.signature(model.forward)}: {error} "
            f"(given: {given}). Kiln traces the model on example inputs: kiln.compile(model, example_inputs=(x,))") from error


def _bound_arguments(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(inspect.signature(model.forward).bind(*args, **kwargs).arguments)


def _dynamic_axes(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any], dynamic_shapes: Any):
    """The example inputs with every dynamic axis of size 0 or 1 widened to 2 (export would
    specialize it), and the name of each dynamic (flat tensor input, axis)."""
    bound = _bound_arguments(model, args, kwargs)
    if isinstance(dynamic_shapes, dict):
        unknown = set(dynamic_shapes) - set(bound)
        if unknown:
            raise FrontendError(f"dynamic_shapes names {sorted(unknown)}, which are not arguments given to "
                                f"{type(model).__name__}.forward (given: {list(bound)})")
        per_argument = {name: dynamic_shapes.get(name) for name in bound}
    else:
        if len(dynamic_shapes) != len(bound):
            raise FrontendError(f"dynamic_shapes has {len(dynamic_shapes)} entries for {len(bound)} arguments ({list(bound)})")
        per_argument = dict(zip(bound, dynamic_shapes))
    axes_of: dict[int, dict[int, Any]] = {}  # id of an input tensor -> its dynamic axes

    def collect(value: Any, spec: Any) -> None:
        if spec is None:
            return
        if isinstance(value, torch.Tensor):
            axes = spec if isinstance(spec, dict) else {i: d for i, d in enumerate(spec) if d is not None}
            axes_of[id(value)] = axes
        elif isinstance(value, (list, tuple)):
            for item, item_spec in zip(value, spec):
                collect(item, item_spec)
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(item, spec.get(key))

    for name, value in bound.items():
        collect(value, per_argument[name])
    names: dict[tuple[int, int], str] = {}
    tensors = [leaf for leaf in pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
    for index, tensor in enumerate(tensors):
        for axis, dim in axes_of.get(id(tensor), {}).items():
            name = getattr(dim, "__name__", None)
            if name and not name.startswith("DimHint"):
                names[(index, axis % tensor.dim())] = name

    def widen(value: Any) -> Any:
        axes = axes_of.get(id(value)) if isinstance(value, torch.Tensor) else None
        for axis in axes or ():
            if value.shape[axis] == 1:
                value = value.expand(*[2 if i == axis % value.dim() else -1 for i in range(value.dim())]).clone()
        return value

    args, kwargs = pytree.tree_map(widen, (args, kwargs))
    return args, kwargs, names


def from_exported_program(exported: torch.export.ExportedProgram, names: dict[tuple[int, int], str] | None = None) -> Graph:
    """Turn an ExportedProgram into a Graph with flat inputs/outputs and weights as attributes.

    `names` gives the user's name of the dynamic dim at (flat tensor input, axis); export's symbol
    there (s77...) is shown under that name.
    """
    module = exported.module()
    if not _without_in_place_ops(module.graph):
        # an in-place op writes through a view, an input or a weight: torch's functionalization
        # knows those aliases (it spells views with fixed shapes, which is why it is the fallback)
        exported = exported.run_decompositions({})
        module = exported.module()
        _batch_norm_as_one_op(module.graph)
    # Unlifting adds a guard-checking call and pytree calling convention; Kiln validates inputs
    # itself and keeps the user's nesting in specs instead.
    # Export's dtype assertions (`.to()` calls) go too: the signature checks input dtypes.
    for node in list(module.graph.nodes):
        if node.op == "call_module" or node.target is torch.ops.aten._assert_tensor_metadata.default:
            module.graph.erase_node(node)
    module.graph._codegen = fx.graph.CodeGen()
    # ... and, in newer torch, forward hooks that check the user's (args, kwargs) against the
    # export-time pytree: the graph is called with flat tensors
    module._forward_pre_hooks.clear()
    module._forward_hooks.clear()
    module.delete_all_unused_submodules()
    constants = _bake_constant_inputs(exported, module)
    mutated = _writes_to_inputs_as_outputs(module)
    constant_outputs = _constant_outputs(module, exported.call_spec.out_spec)
    refuse_training_ops(module)
    module.recompile()
    graph = Graph(module, exported.call_spec.in_spec, exported.call_spec.out_spec, constant_inputs=constants,
                  constant_outputs=constant_outputs, mutated_inputs=mutated)
    graph.symbol_names = _symbol_names(graph, names or {})
    graph.dim_ranges = _dim_ranges(exported, graph.symbol_names)
    return graph.mark_shapes_current()


def _without_in_place_ops(graph: fx.Graph) -> bool:
    """Export's graph may write tensors in place (MPNet's relative position buckets: `ret += …`,
    ResNets' `relu_`); Kiln's passes reason about values, so each such op becomes its functional
    form and the later readers of the tensor it wrote read its result instead. False, with the
    graph unchanged, where a write reaches other tensors (a view, an input, a weight)."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    rewrites = []
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        functional = _functional_overload(node.target)
        written = node.args[0] if node.args else None
        writes_first_only = all(a.alias_info is None or not a.alias_info.is_write for a in schema.arguments[1:])
        if functional is None or not writes_first_only or not isinstance(written, fx.Node) or _aliased(written, node):
            return False
        rewrites.append((node, functional))
    for node, functional in rewrites:  # in order: a second write reads the first's result
        node.target, written = functional, node.args[0]
        for reader in list(written.users):
            if reader is not node and order[reader] > order[node]:
                reader.replace_input_with(written, node)
    return True


def _functional_overload(target: Any) -> Any:
    """aten.add_.Tensor → aten.add.Tensor (None where torch has no such twin)."""
    packet = target.overloadpacket.__name__
    if not packet.endswith("_") or packet.startswith("_"):
        return None
    twin = getattr(torch.ops.aten, packet[:-1], None)
    return getattr(twin, target._overloadname, None) if twin is not None else None


def _returns_alias(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def _aliased(tensor: fx.Node, writer: fx.Node) -> bool:
    """Whether writing `tensor` in place would change another value: it is an input or a weight,
    a view of something, or something else views it."""
    if tensor.op in ("placeholder", "get_attr") or (tensor.op == "call_function" and _returns_alias(tensor)):
        return True
    return any(user is not writer and user.op == "call_function" and _returns_alias(user) and not
               getattr(user.target, "_schema").is_mutable for user in tensor.users)


def _batch_norm_as_one_op(graph: fx.Graph) -> None:
    """Functionalization spells inference batch norm `_native_batch_norm_legit_no_training` with
    a getitem of its output: Kiln's IR keeps it as the `aten.batch_norm` its passes fold."""
    aten = torch.ops.aten
    for node in list(graph.find_nodes(op="call_function", target=aten._native_batch_norm_legit_no_training.default)):
        users = list(node.users)
        if not all(user.target is operator.getitem and user.args[1] == 0 for user in users):
            continue
        x, weight, bias, mean, var, momentum, eps = node.args
        with graph.inserting_before(node):
            norm = graph.call_function(aten.batch_norm.default, (x, weight, bias, mean, var, False, momentum, eps, True))
        norm.meta = dict(users[0].meta) if users else {}
        for user in users:
            user.replace_all_uses_with(norm)
            graph.erase_node(user)
        graph.erase_node(node)


def _bake_constant_inputs(exported: torch.export.ExportedProgram, module: fx.GraphModule) -> list[ConstantInput]:
    """Export specializes non-tensor inputs (bools, ints, strings) but keeps an unused placeholder
    for each; Kiln drops those and records the values, which calls are then checked against."""
    from torch.export.graph_signature import ConstantArgument, InputKind

    user_inputs = [s for s in exported.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    paths = [pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(
        pytree.tree_unflatten([0] * exported.call_spec.in_spec.num_leaves, exported.call_spec.in_spec))[0]]
    placeholders = list(module.graph.find_nodes(op="placeholder"))
    constants = []
    for position, (spec, placeholder) in enumerate(zip(user_inputs, placeholders)):
        if isinstance(spec.arg, ConstantArgument):
            constants.append(ConstantInput(position, _readable_path(paths[position]), spec.arg.value))
            module.graph.erase_node(placeholder)
    return constants


def _writes_to_inputs_as_outputs(module: fx.GraphModule) -> list[int]:
    """Functionalization leaves each in-place write to an input as a `copy_` of its new value
    into the placeholder at the end of the graph. Kiln's graph stays functional: each new value
    becomes an output after the model's own, and the flat input it belongs to is returned, in
    order, for the compiled module to copy it back after every call. A write to a buffer (a
    counter, running statistics) is refused by name: Kiln compiles weights and buffers as constants."""
    graph = module.graph
    placeholders = list(graph.find_nodes(op="placeholder"))
    output = next(iter(graph.find_nodes(op="output")))
    written: list[int] = []
    for node in list(graph.find_nodes(op="call_function", target=torch.ops.aten.copy_.default)):
        destination, value = node.args[0], node.args[1]
        if destination.op == "get_attr":
            raise FrontendError(
                f"the model's forward updates its buffer '{destination.target}' in place (node '{node.name}'); Kiln "
                "compiles buffers as constants, so the compiled module could not keep that state: keep the state "
                f"outside the model and pass it in as an input{where(node)}")
        if destination.op != "placeholder" or not isinstance(value, fx.Node):
            continue
        node.replace_all_uses_with(value)
        graph.erase_node(node)
        written.append(placeholders.index(destination))
        output.args = (tuple(output.args[0]) + (value,),)
    return written


def _constant_outputs(module: fx.GraphModule, out_spec: pytree.TreeSpec) -> list[ConstantInput]:
    """Leaves of the model's outputs that are Python values (`return x.shape[0] * 2`), taken out
    of the graph's outputs and recorded by position and path: the graph returns tensors alone."""
    output = next(iter(module.graph.find_nodes(op="output")))
    returned = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    paths = [pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(
        pytree.tree_unflatten([0] * out_spec.num_leaves, out_spec))[0]]
    for position, value in enumerate(returned):
        if isinstance(value, fx.Node) and not isinstance(value.meta.get("val"), torch.Tensor):
            raise FrontendError(
                f"output{paths[position] if position < len(paths) else f'[{position}]'} is a Python number computed from "
                f"tensor data (node '{value.name}', {value.target}: `.item()` or `int(x)`); a compiled module computes "
                f"tensors: return the tensor itself{where(value)}")
    constants = [ConstantInput(position, f"output{paths[position]}", value)
                 for position, value in enumerate(returned[:out_spec.num_leaves]) if not isinstance(value, fx.Node)]
    output.args = (tuple(value for value in returned if isinstance(value, fx.Node)),)
    return constants


def _readable_path(keystr: str) -> str:
    """`[1]['use_cache']` (export's path into (args, kwargs)) as the user wrote it: `use_cache`."""
    if keystr.startswith("[1]['"):
        head, _, rest = keystr[5:].partition("']")
        return head + rest
    if keystr.startswith("[0]["):
        index, _, rest = keystr[4:].partition("]")
        return f"argument {index}{rest}"
    return keystr


def _dim_ranges(exported: torch.export.ExportedProgram, names: dict[str, str]) -> dict[str, tuple[int, int | None]]:
    """The range export proved each dynamic dim correct for, under the user's name for it."""
    ranges = {}
    for symbol, bounds in exported.range_constraints.items():
        if str(symbol) in names:
            ranges[names[str(symbol)]] = (_finite(bounds.lower) or 0, _finite(bounds.upper))
    return ranges


def _finite(bound: Any) -> int | None:
    """A range bound as an int; None for torch's symbolic infinity (which int() refuses)."""
    try:
        return int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def _symbol_names(graph: Graph, names: dict[tuple[int, int], str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for index, spec in enumerate(graph.inputs):
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                mapping[dim] = names.get((index, axis), mapping.get(dim, dim))
    return mapping
