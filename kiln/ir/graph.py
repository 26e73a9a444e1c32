"""Kiln's graph IR: an ATen-level `torch.fx` graph captured by `torch.export`, owning its weights.

Why fx rather than a home-made IR: every node is a real ATen operator that PyTorch can execute,
so the graph runs as its own numerical reference at any stage of the pipeline, and TVM's importer
reads it directly. Kiln adds what a compiler needs on top: a flat calling convention with
validated input specs, shape/dtype on every node, statistics and a readable text form.

Conventions every pass may rely on (and `Graph.verify` checks):
- `module.graph` takes flat tensor placeholders (one per entry of `inputs`) and returns a flat
  tuple (one per entry of `outputs`); the user's nesting lives in `in_spec` / `out_spec`.
- Weights are `get_attr` nodes on the module; passes treat them as immutable and add new
  tensors with `add_constant` instead of editing them in place.
- After a pass the manager calls `refresh_meta`, so every node has `meta["val"]`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from kiln.errors import PassError

# A dimension is an int, or the name of a symbolic size (e.g. "batch").
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one graph input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {str(self.dtype).removeprefix('torch.')}[{dims}]"

    def example(self, symbolic_size: int | dict[str, int] = 2) -> torch.Tensor:
        """A tensor this spec accepts; symbolic dims take `symbolic_size` (not 0/1, which
        torch.export would specialize), or the size it gives each dim by name."""
        sizes = symbolic_size if isinstance(symbolic_size, dict) else {}
        default = 2 if isinstance(symbolic_size, dict) else symbolic_size
        shape = [sizes.get(d, default) if isinstance(d, str) else d for d in self.shape]
        if self.dtype.is_floating_point:
            return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(self.dtype)
        return torch.zeros(shape, dtype=self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], tuple(data["shape"]), getattr(torch, data["dtype"]))


@dataclass(frozen=True)
class ConstantInput:
    """A non-tensor leaf of the model's inputs (`use_cache=False`, a mode string, an int): baked
    into the capture as a constant, so the graph has no placeholder for it. `position` is its index
    among the flattened (args, kwargs) leaves, `path` names it as the user wrote it. Outputs use
    the same record for a leaf the model returns as a Python value (`return x.shape[0] * 2`): the
    graph computes none of them, the calling convention puts them back in place."""

    position: int
    path: str
    value: Any

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "path": self.path, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ConstantInput":
        return cls(data["position"], data["path"], data["value"])


def spec_of(name: str, value: Any) -> TensorSpec:
    """The spec of a node's `meta["val"]`; symbolic dims become their symbol's name."""
    dims: list[Dim] = []
    for size in value.shape:
        dims.append(size if isinstance(size, int) else _symbol_name(size))
    return TensorSpec(name, tuple(dims), value.dtype)


def _symbol_name(size: torch.SymInt) -> str:
    return str(size.node.expr)


class Graph:
    """One model at one stage of compilation. Cheap to copy: weights are shared, never mutated."""

    def __init__(
        self,
        module: fx.GraphModule,
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        symbol_names: dict[str, str] | None = None,
        constant_inputs: Sequence[ConstantInput] = (),
        dim_ranges: dict[str, tuple[int, int | None]] | None = None,
        constant_outputs: Sequence[ConstantInput] = (),
        mutated_inputs: Sequence[int] = (),
    ) -> None:
        self.module = module
        self.in_spec = in_spec
        self.out_spec = out_spec
        # Maps export's symbol names (s77) to user-facing names (batch).
        self.symbol_names = dict(symbol_names or {})
        self.constant_inputs = tuple(constant_inputs)
        # The sizes each named dynamic dim may take, (min, max or None): the module is correct there.
        self.dim_ranges = dict(dim_ranges or {})
        self.constant_outputs = tuple(constant_outputs)
        # The model writes these inputs in place (`x.mul_(2)`): the graph stays functional and
        # returns each one's new value after the outputs `out_spec` describes, in this order, by
        # the flat tensor input it is written to; a compiled module copies them back after each call.
        self.mutated_inputs = tuple(mutated_inputs)

    # ----------------------------------------------------------------- structure
    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.module.graph.nodes)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(self._spec(n.name, n.meta["val"]) for n in self.module.graph.find_nodes(op="placeholder"))

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        values = self.output_node.args[0]
        return tuple(self._spec(f"output{i}", v.meta["val"]) for i, v in enumerate(values))

    @property
    def output_node(self) -> fx.Node:
        return next(iter(self.module.graph.find_nodes(op="output")))

    def _spec(self, name: str, value: Any) -> TensorSpec:
        spec = spec_of(name, value)
        shape = tuple(self.symbol_names.get(d, d) if isinstance(d, str) else d for d in spec.shape)
        return TensorSpec(name, shape, spec.dtype)

    def constant(self, node: fx.Node) -> torch.Tensor:
        """The tensor behind a `get_attr` node."""
        return _attribute(self.module, str(node.target))

    def constants(self) -> dict[str, torch.Tensor]:
        """Every weight the graph uses, by attribute path (unused attributes are not counted)."""
        return {str(n.target): self.constant(n) for n in self.module.graph.find_nodes(op="get_attr")}

    # ----------------------------------------------------------------- editing
    def copy(self) -> "Graph":
        """A new graph a pass may edit freely: the node structure is copied, weights are shared."""
        graph = copy.deepcopy(self.module.graph)
        module = fx.GraphModule(self.module, graph)
        return Graph(module, self.in_spec, self.out_spec, self.symbol_names, self.constant_inputs, self.dim_ranges,
                     self.constant_outputs, self.mutated_inputs)

    def add_constant(self, tensor: torch.Tensor, name_hint: str, before: fx.Node) -> fx.Node:
        """Register `tensor` as a new weight and return a `get_attr` node for it, placed before `before`."""
        base = "".join(c if c.isalnum() else "_" for c in name_hint)
        for index in itertools.count():
            name = f"{base}_{index}" if index else base
            if not hasattr(self.module, name):
                break
        self.module.register_buffer(name, tensor.detach().contiguous())
        with self.module.graph.inserting_before(before):
            node = self.module.graph.get_attr(name)
        node.meta["val"] = tensor
        return node

    def finalize(self) -> "Graph":
        """Drop unused weights, re-derive the shape/dtype of every node a pass touched (and of
        everything downstream of it), and recompile the module.

        Run by the pass manager after each pass, so passes never keep metadata by hand.
        """
        gm = self.module
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        used = {str(n.target) for n in gm.graph.find_nodes(op="get_attr")}
        for name, _ in list(itertools.chain(gm.named_parameters(), gm.named_buffers())):
            if name not in used:
                _delete_attr(gm, name)
        placeholders = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")]
        # a graph without inputs has no mode to find; its weights are real tensors, which the fresh mode must accept
        mode = detect_fake_mode(placeholders) or FakeTensorMode(allow_non_fake_inputs=True)
        try:
            with mode:
                _ChangedNodesProp(gm, mode).propagate_dont_convert_inputs(*placeholders)
        except Exception as error:  # a pass produced an ill-typed graph
            raise PassError(f"shape propagation failed after rewriting the graph: {error}") from error
        gm.recompile()
        return self

    def mark_shapes_current(self) -> "Graph":
        """Record that every node's `meta["val"]` is current (a fresh capture's): the next
        `finalize` re-derives only what a pass changes after this."""
        for node in self.module.graph.nodes:
            if "val" in node.meta:
                node.meta[_DERIVED_FROM] = _derivation(self.module, node)
        return self

    # ----------------------------------------------------------------- execution
    def flatten_inputs(self, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> list[Any]:
        """The graph's flat tensor inputs from the model's (args, kwargs): constants left out."""
        flat, _ = pytree.tree_flatten((tuple(args), dict(kwargs or {})))
        baked = {c.position for c in self.constant_inputs}
        return [value for position, value in enumerate(flat) if position not in baked]

    def run(self, *flat_inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Execute the graph in PyTorch: the numerical reference at this stage."""
        with torch.no_grad():
            return tuple(self.module(*flat_inputs))

    def example_inputs(self, symbolic_size: int = 2) -> tuple[torch.Tensor, ...]:
        """Inputs of the graph's specs; each dynamic dim at `symbolic_size`, or its smallest legal size."""
        sizes = {name: max(symbolic_size, low) for name, (low, _) in self.dim_ranges.items()}
        return tuple(spec.example(sizes) if sizes else spec.example(symbolic_size) for spec in self.inputs)

    def to_exported_program(self) -> torch.export.ExportedProgram:
        """Re-capture this graph with torch.export (what TVM's importer and `save` consume)."""
        dims: dict[str, torch.export.Dim] = {}
        dynamic_shapes = []
        for spec in self.inputs:
            dynamic_shapes.append(
                {axis: dims.setdefault(d, self._export_dim(d)) for axis, d in enumerate(spec.shape) if isinstance(d, str)}
                or None
            )
        return torch.export.export(self.module, self.example_inputs(), dynamic_shapes=tuple(dynamic_shapes))

    def as_exported_program(self) -> torch.export.ExportedProgram:
        """This graph as an ExportedProgram without re-tracing it (what the TVM importer reads):
        each weight a constant-tensor input, the dynamic dims' ranges those of the capture. A
        re-export traced the whole graph again: 0.8 s of a 12-layer BERT's cold compile."""
        from torch.export.exported_program import ModuleCallEntry, ModuleCallSignature
        from torch.export.graph_signature import (ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec,
                                                  TensorArgument)

        module = fx.GraphModule(self.module, copy.deepcopy(self.module.graph))
        graph = module.graph
        user_inputs = list(graph.find_nodes(op="placeholder"))
        anchor = next(node for node in graph.nodes if node.op != "get_attr")
        constants: dict[str, torch.Tensor] = {}
        specs: list[InputSpec] = []
        for node in list(graph.find_nodes(op="get_attr")):
            with graph.inserting_before(anchor):
                placeholder = graph.placeholder(f"c_{node.name}")
            placeholder.meta = dict(node.meta)
            node.replace_all_uses_with(placeholder)
            graph.erase_node(node)
            constants[str(node.target)] = self.constant(node)
            specs.append(InputSpec(InputKind.CONSTANT_TENSOR, TensorArgument(placeholder.name), str(node.target)))
        specs += [InputSpec(InputKind.USER_INPUT, TensorArgument(node.name), None) for node in user_inputs]
        returned = next(iter(graph.find_nodes(op="output"))).args[0]
        outputs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(node.name), None) for node in returned]
        module.recompile()
        # the flat outputs as they are, where the model's own structure holds Python values or
        # leaves out the inputs' new values
        out_spec = self.out_spec if self.out_spec.num_leaves == len(returned) else pytree.tree_structure(tuple(returned))
        return torch.export.ExportedProgram(
            module, graph, ExportGraphSignature(specs, outputs), {}, self._range_constraints(),
            [ModuleCallEntry("", ModuleCallSignature([], [], self.in_spec, out_spec))], constants=constants)

    def _range_constraints(self) -> dict[Any, Any]:
        """The sizes every symbol of the inputs' shapes may take, from the capture's shape environment."""
        values = [node.meta["val"] for node in self.module.graph.find_nodes(op="placeholder")]
        mode = detect_fake_mode(values)
        if mode is None or mode.shape_env is None:
            return {}
        symbols = {symbol for value in values for size in value.shape if isinstance(size, torch.SymInt)
                   for symbol in size.node.expr.free_symbols}
        return {symbol: mode.shape_env.var_to_range[symbol] for symbol in symbols}

    def _export_dim(self, name: str) -> Any:
        low, high = self.dim_ranges.get(name, (0, None))
        bounds = {"min": low} if low > 2 else {}
        return torch.export.Dim(name, **bounds, **({"max": high} if high is not None else {}))

    # ----------------------------------------------------------------- display
    def text(self) -> str:
        from kiln.ir.printer import format_graph

        return format_graph(self)

    def stats(self):
        from kiln.ir.stats import GraphStats

        return GraphStats.of(self)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        return f"<kiln.Graph ({ins}) with {len(self.nodes)} nodes>"


# meta key: what a node's "val" was derived from (see _derivation)
_DERIVED_FROM = "kiln_val_derived_from"


def _derivation(module: fx.GraphModule, node: fx.Node) -> tuple | None:
    """What `node.meta["val"]` follows from: its op, target and arguments, with each input node
    standing for its own current "val" object and a weight for its tensor object. Shape
    propagation makes new "val" objects, so a change anywhere upstream changes this too. None
    for placeholders and the output, which are always re-run (they cost nothing)."""
    if node.op in ("placeholder", "output"):
        return None
    leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
    leaves = [leaf.meta.get("val") if isinstance(leaf, fx.Node) else leaf for leaf in leaves]
    if node.op == "get_attr":
        leaves.append(_attribute(module, str(node.target)))
    return (node.op, node.target, spec, tuple(leaves))


def _attribute(module: torch.nn.Module, path: str) -> Any:
    """The attribute a dotted `get_attr` target names."""
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _same_derivation(a: tuple | None, b: tuple | None) -> bool:
    """Equal op, target and argument structure; argument values equal, and tensors and symbolic
    sizes the very same objects."""
    if a is None or b is None or a[:3] != b[:3] or len(a[3]) != len(b[3]):
        return False
    plain = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)
    return all(x is y or (type(x) is type(y) and isinstance(x, plain) and x == y) for x, y in zip(a[3], b[3]))


class _ChangedNodesProp(FakeTensorProp):
    """Fake-tensor shape propagation that re-runs only the nodes whose derivation changed: a
    pass rewrites a few nodes of a graph of thousands, and re-running every node after every pass
    was a fifth of a BERT-base's cold compile."""

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "placeholder":  # its value is its own meta["val"], kept as it is (a copy would look changed)
            return fx.Interpreter.run_node(self, n)
        derivation = _derivation(self.module, n)
        if "val" in n.meta and _same_derivation(n.meta.get(_DERIVED_FROM), derivation):
            return n.meta["val"]
        before = n.meta.get("val")
        result = super().run_node(n)
        if _same_metadata(before, n.meta.get("val")):
            n.meta["val"] = before  # its users need not run again: what they read of it is unchanged
        if derivation is not None:
            n.meta[_DERIVED_FROM] = derivation
        return result


def _same_metadata(a: Any, b: Any) -> bool:
    """Two `meta["val"]`s (fake tensors, sizes, or tuples of them) with the same shapes, strides,
    dtypes and devices: what every pass and the importer read of a node."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_metadata(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # fake ones: a weight's own tensor is not kept
        return isinstance(a, FakeTensor) and isinstance(b, FakeTensor) and (a.dtype, a.device, str(a.shape), str(a.stride()), a.requires_grad) == \
            (b.dtype, b.device, str(b.shape), str(b.stride()), b.requires_grad)
    return a is not None and type(a) is type(b) and str(a) == str(b)


def _delete_attr(module: torch.nn.Module, path: str) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        module = getattr(module, part)
    delattr(module, leaf)
