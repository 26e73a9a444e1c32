"""`torch.compile(model, backend="kiln")`: every graph Dynamo captures goes through `kiln.compile`.

    fast = torch.compile(model, backend="kiln", options={"quantize": "dynamic_int8", "threads": 2})
    fast(x)
    print(kiln.dynamo.report())   # each Kiln graph, its source line, its pass table

Dynamo hands over an FX graph of torch calls whose inputs are the frame's tensors, the module's
weights (lifted as inputs) and the sizes of dynamic dims (SymInt inputs). Kiln compiles that
graph as a module of its own: the weights become its constants (inference: they are folded,
packed and quantized like any model's), each size input is read off the tensor dim it came from,
and each dynamic dim is a `torch.export.Dim`, so the graph goes through the same torch.export
capture, ATen IR, passes and compile cache as `kiln.compile`. Graph breaks give several graphs,
each compiled and listed in `graphs()`. A graph Kiln cannot compile runs eagerly, with a warning
naming why (`options={"fallback": False}` makes that an error); a model in training mode is
refused: Kiln compiles inference only.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from kiln.errors import FrontendError, KilnError, TargetError
from kiln.module import CompiledModule


@dataclass
class KilnGraph:
    """One graph Dynamo handed to Kiln: compiled, or run eagerly and why."""

    name: str  # "graph 0/1: forward (model.py:12)": Dynamo's frame/recompile id and where it starts
    module: CompiledModule | None
    fallback: str | None = None  # why it runs eagerly

    def describe(self) -> str:
        if self.module is None:
            return f"{self.name}: eager (fallback: {self.fallback})"
        return f"{self.name}: Kiln, {self.module.target.name}\n{self.module.report.table()}"


_GRAPHS: list[KilnGraph] = []


def graphs() -> list[KilnGraph]:
    """Every graph the kiln backend was handed in this process, in order."""
    return list(_GRAPHS)


def report() -> str:
    """What each graph became, with its compile report."""
    return "\n\n".join(graph.describe() for graph in _GRAPHS) or "no graph was compiled with backend='kiln'"


def reset() -> None:
    """Forget the graphs listed so far (Dynamo's own caches: `torch._dynamo.reset()`)."""
    _GRAPHS.clear()


def kiln_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None) -> Callable:
    """The `torch.compile` backend registered as "kiln" (the `torch_dynamo_backends` entry point)."""
    options = dict(options or {})
    fallback = options.pop("fallback", True)
    _check_options(options)
    name = f"graph {_compile_id()}: {_where(gm)}"
    _refuse_training(gm, example_inputs, name)
    try:
        frame = _Frame(gm, example_inputs)
        debug_dir = options.pop("debug_dir", None)
        if debug_dir is not None:
            options["debug_dir"] = Path(debug_dir) / f"graph_{len(_GRAPHS)}"
        module = _compile(frame, options)
    except KilnError as error:
        if not fallback:
            raise
        warnings.warn(f"kiln: {name} runs eagerly: {error}", stacklevel=2)
        _GRAPHS.append(KilnGraph(name, None, str(error)))
        return gm.forward
    _GRAPHS.append(KilnGraph(name, module))
    return frame.runner(module)


def _compile(frame: "_Frame", options: dict[str, Any]) -> CompiledModule:
    """kiln.compile outside Dynamo's tracing context (Kiln's capture makes fake tensors of its
    own, which must not meet the ones Dynamo is tracing with), through the compile cache keyed by
    Dynamo's graph itself: a graph seen before loads without even torch.export's capture."""
    import time

    import torch.utils._pytree as pytree
    from torch._guards import compile_context, tracing

    from kiln.backends import resolve_target
    from kiln.cache import cache_key, program_tensors
    from kiln.compiler import build_identity, compile as kiln_compile, load_checked, usable_cache
    from kiln.numerics import FLOAT32_TOLERANCE

    resolved = resolve_target(options.get("target", "llvm"))
    cache = usable_cache(options.pop("cache", True), resolved) if options.get("debug_dir") is None else None
    key = None
    if cache is not None:
        settings = {k: v for k, v in options.items() if k not in ("calibration", "verbose")}
        key = cache_key(frame.graph_module.code, frame.structure(), [*frame.named_buffers(), *program_tensors(frame.graph_module)],
                        {**build_identity(resolved, options.get("tuning_dir")), "dynamo": settings},
                        pytree.tree_leaves(list(options.get("calibration") or [])))
        start = time.perf_counter()
        with torch.no_grad():
            reference = [t for t in pytree.tree_leaves(frame(*frame.example_inputs)) if isinstance(t, torch.Tensor)]
        cached, _ = load_checked(cache, key, list(frame.example_inputs), reference,
                                 options.get("tolerance") or FLOAT32_TOLERANCE, start)
        if cached is not None:
            return cached
    with tracing(None), compile_context(None):
        module = kiln_compile(frame, frame.example_inputs, dynamic_shapes=frame.dynamic_shapes(), cache=False, **options)
    reason = module.executable.why_not_here() if options.get("remote") is None else None
    if reason is not None:  # Dynamo calls the graph in this process
        raise TargetError(f"torch.compile(backend='kiln') runs each graph in this process, and {reason}")
    if key is not None:
        cache.store_in_background(key, module)
    return module


def _check_options(options: dict[str, Any]) -> None:
    from kiln.compiler import compile as kiln_compile

    taken = set(inspect.signature(kiln_compile).parameters) - {"model", "example_inputs", "example_kwargs", "dynamic_shapes",
                                                                "dynamic_batch", "input_shapes"}
    unknown = sorted(set(options) - taken)
    if unknown:
        raise KilnError(f"torch.compile(backend='kiln') has no option(s) {unknown}; it takes fallback and "
                        f"kiln.compile's {sorted(taken)}")


def _compile_id() -> str:
    from torch._guards import CompileContext

    compile_id = CompileContext.current_compile_id()
    return str(compile_id) if compile_id is not None else "?"


def _where(gm: fx.GraphModule) -> str:
    """The user's function and line where the graph's first operation is: how a graph is named."""
    for node in gm.graph.nodes:
        trace = node.meta.get("stack_trace") if node.op == "call_function" else None
        if trace:
            frames = [line.strip() for line in trace.strip().splitlines() if line.strip().startswith("File ")]
            if frames:  # 'File "/path/model.py", line 12, in forward'
                file, line, function = frames[-1].split(", ")[:3]
                return f"{function.removeprefix('in ')} ({Path(file.split(chr(34))[1]).name}:{line.removeprefix('line ')})"
    return "a graph of no operations"


# functions whose `training` argument (True: batch statistics, random dropout) Dynamo spells out
_TRAINING_ONLY = ("training", "train")


def _refuse_training(gm: fx.GraphModule, example_inputs: Sequence[Any], name: str) -> None:
    """A model in training mode (batch-norm statistics, dropout) or a graph that must give
    gradients to its inputs is refused by name: Kiln compiles inference only."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or not callable(node.target):
            continue
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            continue
        bound.apply_defaults()
        flag = next((bound.arguments[key] for key in _TRAINING_ONLY if key in bound.arguments), False)
        if flag is True:
            raise FrontendError(
                f"{name}: {getattr(node.target, '__name__', node.target)} runs in training mode "
                f"(node '{node.name}'); Kiln compiles inference only: call model.eval() before torch.compile")
    if torch.is_grad_enabled():
        for placeholder, example in zip(gm.graph.find_nodes(op="placeholder"), example_inputs):
            if isinstance(example, torch.Tensor) and example.requires_grad and not _is_weight(example):
                raise FrontendError(
                    f"{name}: input '{placeholder.name}' requires grad; Kiln compiles inference only "
                    f"(run under torch.no_grad() or torch.inference_mode(), or detach it)")


def _is_weight(example: Any) -> bool:
    """A parameter or buffer of the module Dynamo inlined (lifted as a graph input)."""
    return isinstance(example, torch.nn.Parameter) or getattr(example, "_dynamo_static_input_type", None) is not None


class _Frame(torch.nn.Module):
    """Dynamo's graph as a model Kiln can capture: the weights are its buffers, its arguments the
    frame's tensors alone, and each size input is read from the tensor dim it stands for."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        super().__init__()
        self.graph_module = gm
        placeholders = list(gm.graph.find_nodes(op="placeholder"))
        self.roles: list[tuple[str, Any]] = []  # ("weight", buffer) | ("input", index) | ("size", (index, axis))
        self.inputs: list[int] = []  # positions of the frame's tensors among Dynamo's arguments
        symbols: dict[str, tuple[int, int]] = {}  # dynamic dim symbol -> (input index, axis)
        for position, (node, example) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(example, torch.Tensor) and _is_weight(example):
                buffer = f"weight_{position}"
                self.register_buffer(buffer, example.detach(), persistent=False)
                self.roles.append(("weight", buffer))
            elif isinstance(example, torch.Tensor):
                index = len(self.inputs)
                self.inputs.append(position)
                self.roles.append(("input", index))
                shape = getattr(node.meta.get("example_value"), "shape", ())
                for axis, size in enumerate(shape):
                    if isinstance(size, torch.SymInt) and not size.node.expr.is_Symbol:
                        raise FrontendError(f"input '{node.name}' has dim {axis} of size {size}, an expression of "
                                            "dynamic sizes: Kiln's dynamic dims are free sizes")
                    if isinstance(size, torch.SymInt):
                        symbols.setdefault(str(size), (index, axis))
            else:
                self.roles.append(("size", node))
        self.symbols = symbols
        self.sizes: dict[int, tuple[int, int]] = {}
        for position, (role, node) in enumerate(self.roles):
            if role == "size":
                expression = str(node.meta.get("example_value"))
                if expression not in symbols:
                    raise FrontendError(f"input '{node.name}' is a Python number ({expression}) that is no tensor's "
                                        "size: Kiln compiles graphs of tensors")
                self.sizes[position] = symbols[expression]
        self.example_inputs = tuple(example_inputs[position] for position in self.inputs)

    def structure(self) -> str:
        """What the cache key holds besides the code and weights: each argument's role, and the
        frame tensors' dtypes and shapes as Dynamo traced them (dynamic dims by symbol)."""
        placeholders = list(self.graph_module.graph.find_nodes(op="placeholder"))
        values = [placeholders[position].meta.get("example_value") for position in self.inputs]
        return repr((self.roles, self.sizes, [(str(v.dtype), [str(d) for d in v.shape]) for v in values]))

    def forward(self, *tensors: torch.Tensor) -> Any:
        arguments = []
        for position, (role, value) in enumerate(self.roles):
            if role == "weight":
                arguments.append(getattr(self, value))
            elif role == "input":
                arguments.append(tensors[value])
            else:
                index, axis = self.sizes[position]
                arguments.append(tensors[index].shape[axis])
        return self.graph_module(*arguments)

    def dynamic_shapes(self) -> dict[str, tuple[dict[int, Any] | None, ...]] | None:
        """torch.export's spelling of Dynamo's dynamic dims: one `Dim` per symbol, shared by every
        tensor dim Dynamo gave that symbol."""
        if not self.symbols:
            return None
        dims = {symbol: torch.export.Dim(f"dim_{symbol}") for symbol in self.symbols}
        placeholders = list(self.graph_module.graph.find_nodes(op="placeholder"))
        spec: list[dict[int, Any] | None] = []
        for position in self.inputs:
            shape = getattr(placeholders[position].meta.get("example_value"), "shape", ())
            axes = {axis: dims[str(size)] for axis, size in enumerate(shape) if isinstance(size, torch.SymInt) and str(size) in dims}
            spec.append(axes or None)
        return {"tensors": tuple(spec)}  # `forward(*tensors)`

    def runner(self, module: CompiledModule) -> Callable:
        """What Dynamo calls with its arguments: the frame's tensors go to the Kiln module."""
        positions = self.inputs

        def run(*arguments: Any) -> Any:
            outputs = module(*(arguments[position] for position in positions))
            return outputs if isinstance(outputs, (tuple, list)) else (outputs,)

        return run
