"""ONNX's backend interface (`onnx.backend.base.Backend`) for Kiln, so ONNX's own test suites run
through `kiln.compile` like any user's `.onnx` file would.

    from kiln.testing.onnx_backend import KilnBackend
    outputs = KilnBackend.run_model(model_proto, [numpy arrays])

Kiln compiles for static shapes. Where an operator needs a value at import time (Reshape's shape,
Reduce's axes, Pad's pads) and the graph takes it as an input, the rep compiles a module for the
value given at run time (the input becomes an initializer), and keeps one module per such value.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from kiln.errors import ValueRequiredError
from kiln.ir.onnx import narrow_types as onnx_narrow_types
from kiln.ir.onnx.frontend import check_model
from kiln.ir.onnx.ops.registry import tensor_from_numpy, tensor_to_numpy


def _bind(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the inputs in `values` turned into initializers holding those values."""
    bound = onnx.ModelProto.FromString(model.SerializeToString())
    kept = [i for i in bound.graph.input if i.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    bound.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in values.items())
    return bound


def _value_sources(model: onnx.ModelProto, name: str) -> list[str]:
    """The graph inputs whose values (not only shapes: Shape and Size stop the walk) `name` is computed from."""
    producers = {output: node for node in _all_nodes(model.graph) for output in node.output}
    sources, seen, pending = [], set(), [name]
    while pending:
        value = pending.pop()
        if value in seen or not value:
            continue
        seen.add(value)
        node = producers.get(value)
        if node is None:
            sources.append(value)
        elif node.op_type not in ("Shape", "Size"):
            pending.extend(node.input)
            for branch in _subgraphs(node):  # an If's outputs come from its branches' outputs
                pending.extend(output.name for output in branch.output)
    return sources


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [onnx.helper.get_attribute_value(a) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and those of its subgraphs (If branches), at any depth."""
    return [inner for node in graph.node for inner in [node, *(n for g in _subgraphs(node) for n in _all_nodes(g))]]


class KilnRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, target: str | dict, options: dict[str, Any]) -> None:
        self.model = model
        self.target = target
        self.options = options
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        self.value_inputs: list[str] = []  # inputs the graph needs as import-time values
        self.compiled: dict[tuple, Any] = {}

    def _compile(self, arrays: dict[str, np.ndarray]):
        from kiln.compiler import compile as kiln_compile

        while True:
            key = tuple(arrays[name].tobytes() for name in self.value_inputs)
            if key in self.compiled:
                return self.compiled[key]
            bound = {name: arrays[name] for name in self.value_inputs}
            free = [name for name in self.input_names if name not in bound]
            examples = [tensor_from_numpy(arrays[name], name) for name in free]  # the run's own data: drift on real values
            shapes = {name: list(arrays[name].shape) for name in free}
            try:
                # the suite's cases feed NaN and infinities on purpose (Cast, IsNaN, Max): what they compute is the test
                options = {"allow_nonfinite_inputs": True, **self.options}
                module = kiln_compile(_bind(self.model, bound), examples, target=self.target, input_shapes=shapes, **options)
            except ValueRequiredError as error:
                sources = [name for name in _value_sources(self.model, error.name) if name in arrays and name not in self.value_inputs]
                if not sources:
                    raise
                self.value_inputs.extend(sources)
                continue
            self.compiled[key] = module
            return module

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        given = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        arrays = {name: np.asarray(a) for name, a in zip(self.input_names, given)}
        module = self._compile(arrays)
        tensors = [tensor_from_numpy(arrays[name], name) for name in self.input_names if name not in self.value_inputs]
        outputs = module(*tensors)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        arrays = [tensor_to_numpy(o.detach().cpu()) for o in outputs]
        return tuple(  # narrow element types (float8, int4) travel in a wider carrier: back to the declared type
            onnx_narrow_types.from_carrier_array(a, value.type.tensor_type.elem_type)
            if value.type.tensor_type.elem_type in onnx_narrow_types.NARROW_TYPES else a
            for a, value in zip(arrays, self.model.graph.output)
        )


class KilnBackend(Backend):
    target: str | dict = "llvm"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnRep:
        """Compilation waits for the first run, which gives the input shapes and values."""
        check_model(model, model.graph.name or "the ONNX model")
        return KilnRep(model, kwargs.pop("target", cls.target), kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[Any], device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
