"""ONNX → Kiln IR. The ONNX graph becomes a torch module that calls one torch operator per ONNX
node; `torch.export` captures it like any PyTorch model, so every Kiln pass applies to ONNX models
exactly as to PyTorch ones.

Why Kiln's own importer: onnx2torch imports torchvision when it loads, and no torchvision release
installs beside the pinned torch here; TVM's ONNX importer goes straight to Relax, past Kiln's passes.

Values computable at import time (initializers, `Constant`, `Shape` of a statically shaped tensor,
and whatever is computed from those alone: the shape arithmetic exporters emit) are folded with
ONNX's reference evaluator when the module is built; the ones the graph still needs become buffers
(weights). Operators' shape-like inputs (Reshape's shape, Slice's starts, ...) must be such values.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, external_data_helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from kiln.errors import FrontendError, UnsupportedOpError, ValueRequiredError
from kiln.ir.graph import Graph
from kiln.ir.onnx.ops import CONVERTERS
from kiln.ir.onnx.ops.registry import NodeContext, tensor_from_numpy, torch_dtype
from kiln.ir.torch_frontend import from_torch

# The default domain's opsets read: from 7 up to the newest the installed onnx package defines.
# Converters check the opset themselves where an operator's meaning changed (not only its types).
SUPPORTED_OPSETS = range(7, onnx.defs.onnx_opset_version() + 1)


def load_onnx(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model and a name for messages; malformed, truncated or invalid files are FrontendErrors."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "the ONNX model"
    path = Path(model)
    if not path.is_file():
        raise FrontendError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and friends
        raise FrontendError(f"{path}: not a readable ONNX model (truncated or malformed: {error})") from error
    if not proto.graph.node:
        raise FrontendError(f"{path}: the ONNX file holds no graph (truncated or not an ONNX model)")
    _load_external_data(proto, path)
    return proto, str(path)


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Tensors kept in side files, read only from plain files inside the model's folder: a
    location that is absolute, climbs out with '..' or goes through a symlink is refused (a model
    file must not make Kiln read, say, an SSH key into a weight)."""
    folder = path.parent.resolve()
    external = [tensor for tensor in _tensors(proto.graph) if external_data_helper.uses_external_data(tensor)]
    for tensor in external:
        location = external_data_helper.ExternalDataInfo(tensor).location
        resolved = (folder / location).resolve()
        unsafe = (not location or Path(location).is_absolute() or ".." in Path(location).parts
                  or folder not in resolved.parents or (folder / location).is_symlink())
        if unsafe:
            raise FrontendError(
                f"{path}: initializer '{tensor.name}' keeps its data at {location!r}, outside the model's folder "
                f"{folder} (absolute, '..' or a symlink); refused"
            )
        if not resolved.is_file():
            raise FrontendError(f"{path}: initializer '{tensor.name}' keeps its data in {location!r}, which is not in {folder}")
    try:
        external_data_helper.load_external_data_for_model(proto, str(folder))
    except Exception as error:  # onnx's own checks: offsets past the end, lengths that disagree
        raise FrontendError(f"{path}: the model's external data cannot be read: {error}") from error
    for tensor in external:
        expected = _raw_bytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            raise FrontendError(f"{path}: initializer '{tensor.name}' ({list(tensor.dims)}) needs {expected:,} bytes of "
                                f"external data, its file gives {len(tensor.raw_data):,} (truncated?)")


def _raw_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's raw data must hold (sub-byte types packed); None for strings."""
    if tensor.data_type == TensorProto.STRING:
        return None
    bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4, TensorProto.INT2: 2, TensorProto.UINT2: 2}
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if tensor.data_type in bits:
        return (count * bits[tensor.data_type] + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _tensors(graph: onnx.GraphProto):
    """Every tensor a graph holds: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            yield from ([attribute.t] if attribute.HasField("t") else [])
            yield from attribute.tensors
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _tensors(subgraph)


def check_model(model: onnx.ModelProto, source: str) -> None:
    """Opsets, value types and inputs every node reads: what Kiln can import, checked up front."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version not in SUPPORTED_OPSETS:
            raise FrontendError(
                f"{source}: opset {opset.version} of the default ONNX domain is not supported "
                f"(Kiln reads opsets {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1})"
            )
    for value in [*model.graph.input, *model.graph.output]:
        if not value.type.HasField("tensor_type"):
            kind = value.type.WhichOneof("value") or "untyped"
            raise FrontendError(f"{source}: '{value.name}' has {kind.replace('_type', '')} type: Kiln compiles tensors only")
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        for name in node.input:
            if name not in known:
                raise FrontendError(
                    f"{source}: node '{node.name or node.op_type}' ({node.op_type}) reads '{name}', which no "
                    f"input, initializer or earlier node provides (a missing initializer?)"
                )
        known.update(node.output)


def _input_shapes(model: onnx.ModelProto, given: dict[str, Sequence[int]] | None, source: str) -> dict[str, list[int]]:
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if given and value.name in given:
            shapes[value.name] = [int(d) for d in given[value.name]]
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            symbolic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
            raise FrontendError(
                f"{source}: input '{value.name}' has symbolic dimensions {symbolic}: "
                f"give its shape with input_shapes={{'{value.name}': [...]}}"
            )
        shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def _static_types(model: onnx.ModelProto, inputs: dict[str, list[int]]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Every tensor's shape where ONNX shape inference can tell it statically, and every element type
    it can tell."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name in inputs:
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in inputs[value.name]:
                shape.dim.add().dim_value = size
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # inference is an optimization here: without it Shape() is traced, not folded
        inferred = model
    shapes, elem_types = {}, {t.name: t.data_type for t in model.graph.initializer}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.tensor_type.elem_type:
            elem_types[value.name] = value.type.tensor_type.elem_type
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
        elif value.type.tensor_type.HasField("shape") and not dims:
            shapes[value.name] = []
    return {**shapes, **inputs}, elem_types


class OnnxModule(torch.nn.Module):
    """Calls the torch operators of each ONNX node in order; constants are folded beforehand."""

    def __init__(self, model: onnx.ModelProto, source: str, input_shapes: dict[str, list[int]]) -> None:
        super().__init__()
        self.source = source
        self.graph_proto = model.graph
        self.input_names = list(input_shapes)
        self.input_dtypes = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
        self.output_names = [o.name for o in model.graph.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), SUPPORTED_OPSETS.stop - 1)
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        shapes, self.elem_types = _static_types(model, input_shapes)
        self.traced_nodes = []
        pending = list(reversed(model.graph.node))
        while pending:
            node = pending.pop()
            if node.op_type == "If" and node.input[0] in self.constants:
                pending.extend(reversed(_inlined_branch(node, bool(self.constants[node.input[0]]))))
            elif not _fold(node, shapes, self.constants, self.opset):
                self.traced_nodes.append(node)
        needed = {name for node in self.traced_nodes for name in node.input} | set(self.output_names)
        self.buffer_names = {}
        for index, name in enumerate(sorted(n for n in needed if n in self.constants)):
            self.buffer_names[name] = f"onnx_constant_{index}"
            self.register_buffer(self.buffer_names[name], tensor_from_numpy(self.constants[name], name), persistent=False)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, Any] = dict(zip(self.input_names, inputs))
        for name, buffer in self.buffer_names.items():
            values[name] = getattr(self, buffer)
        known = dict(self.constants)  # grows by what tracing makes known: the shapes of traced tensors
        for node in self.traced_nodes:
            self._run_node(node, values, known)
        return tuple(values[name] if name in values else tensor_from_numpy(known[name], name) for name in self.output_names)

    def _run_node(self, node: onnx.NodeProto, values: dict[str, Any], known: dict[str, np.ndarray]) -> None:
        """Folds `node` if its inputs are known, else calls its converter; its outputs go into `values`."""
        traced = values.get(node.input[0]) if node.op_type in ("Shape", "Size") else None
        if traced is not None and all(isinstance(d, int) for d in traced.shape):
            if _fold(node, {node.input[0]: list(traced.shape)}, known, self.opset):
                values[node.output[0]] = tensor_from_numpy(known[node.output[0]], node.output[0])
                return
        elif _fold(node, {}, known, self.opset):
            values.update((name, tensor_from_numpy(known[name], name)) for name in node.output if name)
            return
        if node.op_type == "Scan" and node.domain in ("", "ai.onnx") and self.opset >= 9:
            _store(zip(node.output, self._scan(node, [values.get(name) for name in node.input], values, known)), values, known)
            return
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            _store(zip(node.output, self._loop(node, values, known)), values, known)
            return
        converter = CONVERTERS.get(node.op_type)
        if converter is None or node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(
                f"ONNX {node.op_type}" + (f" (domain {node.domain})" if node.domain else ""),
                node.name or node.output[0], f"  {self.source}: node '{node.name or node.output[0]}'", "Kiln's ONNX frontend",
            )
        context = NodeContext(node, [values.get(name) if name else None for name in node.input], known, self.opset, self.elem_types)
        outputs = converter(context)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        values.update(zip(node.output, outputs))

    def _scan(self, node: onnx.NodeProto, inputs: list[Any], values: dict[str, Any], known: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """ONNX Scan unrolled: its body runs once per step of the (static) scan length, on the
        carried states and each scan input's slice, in the enclosing graph's scope."""
        attribute = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        body = attribute["body"]
        scan_inputs = attribute["num_scan_inputs"]
        states, sequences = list(inputs[:len(inputs) - scan_inputs]), inputs[len(inputs) - scan_inputs:]
        input_axes = attribute.get("scan_input_axes") or [0] * scan_inputs
        input_reversed = attribute.get("scan_input_directions") or [0] * scan_inputs
        scan_outputs = len(body.output) - len(states)
        output_axes = attribute.get("scan_output_axes") or [0] * scan_outputs
        output_reversed = attribute.get("scan_output_directions") or [0] * scan_outputs
        axes = [axis % s.dim() for axis, s in zip(input_axes, sequences)]
        length = sequences[0].shape[axes[0]]
        steps: list[list[torch.Tensor]] = [[] for _ in range(scan_outputs)]
        for step in range(length):
            slices = [s.select(axis, length - 1 - step if reverse else step) for s, axis, reverse in zip(sequences, axes, input_reversed)]
            results, _ = self._run_body(body, [*states, *slices], {}, values, known)
            states = results[:len(states)]
            for collected, result in zip(steps, results[len(states):]):
                collected.append(result)
        stacked = []
        for collected, axis, reverse in zip(steps, output_axes, output_reversed):
            stacked.append(_stacked(collected[::-1] if reverse else collected, axis))
        return [*states, *stacked]

    def _loop(self, node: onnx.NodeProto, values: dict[str, Any], known: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """ONNX Loop unrolled: its trip count and condition must be known at import time, and so
        must the condition each iteration computes (a loop that stops on data has no static shape)."""
        where = f"ONNX Loop node '{node.name or node.output[0]}'"
        bounds = {}
        for index, role in ((0, "trip count"), (1, "condition")):
            name = node.input[index] if index < len(node.input) else ""
            if name and name not in known:
                raise ValueRequiredError(f"{where}: its {role} '{name}' must be known at import time", name)
            bounds[role] = known[name] if name else None
        body = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "body")
        states = [known[name] if name in known else values[name] for name in node.input[2:]]
        trips = int(bounds["trip count"]) if bounds["trip count"] is not None else None
        condition = bool(bounds["condition"]) if bounds["condition"] is not None else True
        steps: list[list[torch.Tensor]] = [[] for _ in range(len(body.output) - 1 - len(states))]
        iteration = 0
        while condition and (trips is None or iteration < trips):
            constants = {body.input[0].name: np.array(iteration, dtype=np.int64), body.input[1].name: np.array(condition)}
            results, body_known = self._run_body(body, states, constants, values, known)
            if body.output[0].name not in body_known:
                raise FrontendError(f"{where}: its condition is computed from data, so its trip count has no static value")
            condition = bool(body_known[body.output[0].name])
            states = results[1:1 + len(states)]
            for collected, result in zip(steps, results[1 + len(states):]):
                collected.append(result)
            iteration += 1
        if any(not collected for collected in steps):
            raise FrontendError(f"{where}: a loop that runs no iteration has scan outputs of unknown shape")
        return [*states, *(_stacked(collected, 0) for collected in steps)]

    def _run_body(self, body: onnx.GraphProto, inputs: list[Any], constants: dict[str, np.ndarray], values: dict[str, Any],
                  known: dict[str, np.ndarray]) -> tuple[list[torch.Tensor], dict[str, np.ndarray]]:
        """One run of a subgraph in the enclosing scope: its first inputs bound to the first body inputs
        after `constants` (values known at import time); its outputs and what became known."""
        scope, scope_known = dict(values), dict(known)
        for name in (i.name for i in body.input):
            scope_known.pop(name, None)  # a body input shadows an outer constant of that name
        _store(zip([i.name for i in body.input], [*constants.values(), *inputs]), scope, scope_known)
        for inner in body.node:
            self._run_node(inner, scope, scope_known)
        return [scope_known[o.name] if o.name in scope_known else scope[o.name] for o in body.output], scope_known

    def example_inputs(self, shapes: dict[str, list[int]]) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        examples = []
        for name in self.input_names:
            dtype = torch_dtype(self.input_dtypes[name], f"input '{name}'")
            if dtype.is_floating_point:
                examples.append(torch.randn(shapes[name], generator=generator).to(dtype))
            else:
                examples.append(torch.zeros(shapes[name], dtype=dtype))
        return tuple(examples)


_RANDOM = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")


def _fold(node: onnx.NodeProto, shapes: dict[str, list[int]], constants: dict[str, np.ndarray], opset: int) -> bool:
    """Evaluate `node` into `constants` if its inputs are constants (or, for Shape and Size, its
    input's shape is in `shapes`); True if it was. ONNX's reference evaluator computes it."""
    if node.op_type in ("Shape", "Size") and node.input[0] in shapes and node.input[0] not in constants:
        shape = np.array(shapes[node.input[0]], dtype=np.int64)
        if node.op_type == "Size":
            constants[node.output[0]] = np.array(np.prod(shape), dtype=np.int64)
            return True
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), len(shape))
        constants[node.output[0]] = shape[start:end]
        return True
    if node.op_type in _RANDOM or not all(name == "" or name in constants for name in node.input):
        return False
    try:
        results = _evaluator(node, opset).run(None, {n: constants[n] for n in node.input if n})
    except Exception:
        return False  # the converter will handle (or name) it
    for name, value in zip(node.output, results):
        constants[name] = np.asarray(value)
    return True


def _evaluator(node: onnx.NodeProto, opset: int) -> ReferenceEvaluator:
    """The reference evaluator of `node` at the model's opset (a bare node evaluates at the newest,
    where e.g. Unsqueeze takes its axes as an input, not an attribute)."""
    if node.domain not in ("", "ai.onnx"):
        return ReferenceEvaluator(node)
    helper = onnx.helper
    graph = helper.make_graph([node], "fold", [helper.make_empty_tensor_value_info(n) for n in node.input if n],
                              [helper.make_empty_tensor_value_info(n) for n in node.output if n])
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _store(outputs: Any, values: dict[str, Any], known: dict[str, np.ndarray]) -> None:
    """Name → value pairs into the scope: numpy arrays are values known at import time (kept
    foldable), tensors are traced."""
    for name, value in outputs:
        if isinstance(value, np.ndarray):
            known[name] = value
            value = tensor_from_numpy(value, name)
        values[name] = value


def _stacked(items: list[Any], axis: int) -> Any:
    """Per-iteration results stacked along `axis`: in numpy when every one is known at import time."""
    if all(isinstance(item, np.ndarray) for item in items):
        return np.stack(items, axis % (items[0].ndim + 1))
    tensors = [tensor_from_numpy(item, "scan output") if isinstance(item, np.ndarray) else item for item in items]
    return torch.stack(tensors, axis % (tensors[0].dim() + 1))


def _inlined_branch(node: onnx.NodeProto, condition: bool) -> list[onnx.NodeProto]:
    """The nodes of the branch an If with a condition known at import time takes, then Identity
    nodes that give the branch's outputs the If's output names."""
    branch = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
    renames = [onnx.helper.make_node("Identity", [inner.name], [outer]) for inner, outer in zip(branch.output, node.output)]
    return [*branch.node, *renames]


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"input_{cleaned}"


def _with_input_names(names: list[str]) -> type[OnnxModule]:
    """An OnnxModule class whose forward names its parameters after the ONNX inputs, so that the
    captured graph and the compiled module's signature carry the model's own input names."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return OnnxModule.forward(self, *inputs)

    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(_identifier(n), inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    forward.__signature__ = inspect.Signature(parameters)
    return type("OnnxModule", (OnnxModule,), {"forward": forward})


def onnx_module(
    model: str | Path | onnx.ModelProto, input_shapes: dict[str, Sequence[int]] | None = None
) -> tuple[OnnxModule, tuple[torch.Tensor, ...]]:
    """The ONNX model as a torch module, with example inputs of its input shapes."""
    proto, source = load_onnx(model)
    check_model(proto, source)
    shapes = _input_shapes(proto, input_shapes, source)
    module = _with_input_names(list(shapes))(proto, source, shapes)
    return module, module.example_inputs(shapes)


def from_onnx(model: str | Path | onnx.ModelProto, input_shapes: dict[str, Sequence[int]] | None = None) -> Graph:
    module, inputs = onnx_module(model, input_shapes)
    return from_torch(module, inputs)
