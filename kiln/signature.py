"""A compiled module's calling convention, and the checks that give wrong inputs a clear error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from kiln.errors import InputMismatchError, NonFiniteInputError
from kiln.ir.graph import ConstantInput, Graph, TensorSpec


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    constant_inputs: tuple[ConstantInput, ...] = ()
    dim_ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    constant_outputs: tuple[ConstantInput, ...] = ()
    # the flat inputs the model writes in place; their new values are the last outputs (kiln/ir/graph.py)
    mutated_inputs: tuple[int, ...] = ()
    # NaN and infinities in float inputs are refused: compiled kernels do not carry them as eager
    # does (relu(NaN) is 0 in TVM's max, NaN in PyTorch's); kiln.compile(allow_nonfinite_inputs=True) lifts it
    refuse_nonfinite: bool = True

    @classmethod
    def of(cls, graph: Graph, refuse_nonfinite: bool = True) -> "Signature":
        return cls(graph.inputs, graph.outputs, graph.in_spec, graph.out_spec, graph.constant_inputs, graph.dim_ranges,
                   graph.constant_outputs, graph.mutated_inputs, refuse_nonfinite)

    def flatten(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """The flat input tensors, checked against the specs (count, rank, sizes, dtype). A keyword
        compiled as a constant (`use_cache=False`) may be left out; given, it must be that value."""
        given = {**self._baked_keywords(), **kwargs}
        order = list(self.in_spec.child(1).context or [])  # keywords in the order they were captured
        kwargs = {name: given[name] for name in order if name in given} | {k: v for k, v in given.items() if k not in order}
        flat, spec = pytree.tree_flatten((tuple(args), kwargs))
        expected = ", ".join(s.describe() for s in self.inputs)
        if spec != self.in_spec:
            raise InputMismatchError(
                f"expected {len(self.inputs)} input(s) ({expected}), got {len(flat)}: {_describe(flat)}")
        for constant in self.constant_inputs:
            value = flat[constant.position]
            if type(value) is not type(constant.value) or value != constant.value:
                raise InputMismatchError(
                    f"input '{constant.path}' was compiled as the constant {constant.value!r}; got {value!r}. "
                    f"Compile again with {constant.path}={value!r} for that behaviour")
        baked = {c.position for c in self.constant_inputs}
        flat = [value for position, value in enumerate(flat) if position not in baked]
        tensors = [self._tensor(value, spec) for value, spec in zip(flat, self.inputs)]
        self._check_shapes(tensors)
        if self.refuse_nonfinite:
            self._check_finite(tensors)
        return tensors

    def _check_finite(self, tensors: list[torch.Tensor]) -> None:
        for tensor, spec in zip(tensors, self.inputs):
            if tensor.is_floating_point() and tensor.numel() and not _all_finite(tensor):
                position = int(torch.nonzero(~torch.isfinite(tensor))[0].tolist()[0]) if tensor.dim() == 1 else \
                    tuple(torch.nonzero(~torch.isfinite(tensor))[0].tolist())
                raise NonFiniteInputError(
                    f"input '{spec.name}' holds {tensor[position].item()} at {position}: this module refuses NaN and "
                    "infinities, which its kernels do not carry as eager PyTorch does. Compile with "
                    "allow_nonfinite_inputs=True to pass them through as the kernels compute them")

    def _baked_keywords(self) -> dict[str, Any]:
        """Top-level keywords that were constants (or None) at capture: what an omitted one means."""
        kwargs_spec = self.in_spec.child(1)
        baked = {c.path: c.value for c in self.constant_inputs if c.path in (kwargs_spec.context or [])}
        for name, child in zip(kwargs_spec.context or [], kwargs_spec.children()):
            if child.type is type(None):
                baked[name] = None
        return baked

    @staticmethod
    def _tensor(value: Any, spec: TensorSpec) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise InputMismatchError(f"input '{spec.name}': expected a tensor ({spec.describe()}), got {type(value).__name__}")
        if value.dtype != spec.dtype:
            raise InputMismatchError(f"input '{spec.name}': expected dtype {spec.dtype}, got {value.dtype}")
        return value

    def _check_shapes(self, tensors: list[torch.Tensor]) -> None:
        symbols: dict[str, tuple[int, str]] = {}
        for tensor, spec in zip(tensors, self.inputs):
            got = tuple(tensor.shape)
            problem = len(got) != len(spec.shape)
            for size, want in zip(got, spec.shape):
                if isinstance(want, int):
                    problem |= size != want
                else:
                    low, high = self.dim_ranges.get(want, (0, None))
                    if size < low or (high is not None and size > high):
                        raise InputMismatchError(
                            f"input '{spec.name}': dimension '{want}' is {size}; this module was compiled for "
                            f"{want} in [{low}, {'∞' if high is None else high}]")
                    first = symbols.setdefault(want, (size, spec.name))
                    if first[0] != size:
                        raise InputMismatchError(
                            f"input '{spec.name}': dimension '{want}' is {size}, but input '{first[1]}' gave it {first[0]}"
                        )
            if problem:
                raise InputMismatchError(f"input '{spec.name}': expected shape {_shape(spec.shape)}, got {_shape(got)}")

    def unflatten(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor] = ()) -> Any:
        """The model's output structure from the flat outputs; the new values of inputs the model
        writes in place (the last outputs) are copied into `inputs`, the tensors the caller gave."""
        outputs = list(outputs)
        if self.mutated_inputs:
            written = outputs[len(outputs) - len(self.mutated_inputs):]
            del outputs[len(outputs) - len(self.mutated_inputs):]
            with torch.no_grad():
                for position, value in zip(self.mutated_inputs, written):
                    inputs[position].copy_(value)
        for constant in self.constant_outputs:
            outputs.insert(constant.position, constant.value)
        result = pytree.tree_unflatten(outputs, self.out_spec)
        return torch.Size(result) if self.out_spec.type is torch.Size else result  # pytree rebuilds a Size as a tuple

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "in_spec": pytree.treespec_dumps(self.in_spec),
            "out_spec": pytree.treespec_dumps(self.out_spec),
            "constant_inputs": [c.to_json() for c in self.constant_inputs],
            "dim_ranges": {name: list(bounds) for name, bounds in self.dim_ranges.items()},
            "constant_outputs": [c.to_json() for c in self.constant_outputs],
            "mutated_inputs": list(self.mutated_inputs),
            "refuse_nonfinite": self.refuse_nonfinite,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Signature":
        return cls(
            tuple(TensorSpec.from_json(s) for s in data["inputs"]),
            tuple(TensorSpec.from_json(s) for s in data["outputs"]),
            _load_spec(data["in_spec"]),
            _load_spec(data["out_spec"]),
            tuple(ConstantInput.from_json(c) for c in data.get("constant_inputs", ())),
            {name: (low, high) for name, (low, high) in data.get("dim_ranges", {}).items()},
            tuple(ConstantInput.from_json(c) for c in data.get("constant_outputs", ())),
            tuple(data.get("mutated_inputs", ())),
            bool(data.get("refuse_nonfinite", True)),
        )


def _load_spec(text: str) -> pytree.TreeSpec:
    """A saved tree spec; one holding a `transformers` cache needs its classes registered first."""
    if "transformers." in text:
        from kiln.ir.transformers_caches import register_cache_pytrees

        register_cache_pytrees()
    return pytree.treespec_loads(text)


def _shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _describe(values: list[Any]) -> str:
    return ", ".join(
        f"{str(v.dtype).removeprefix('torch.')}{_shape(v.shape)}" if hasattr(v, "shape") else type(v).__name__ for v in values
    ) or "nothing"


# float dtype -> (the integer dtype of its bits, the mask of its exponent): all ones is inf or NaN
_EXPONENT_BITS = {torch.float16: (torch.int16, 0x7C00), torch.bfloat16: (torch.int16, 0x7F80),
                  torch.float32: (torch.int32, 0x7F800000), torch.float64: (torch.int64, 0x7FF0000000000000)}


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite, checked on one thread with numpy where the tensor is on
    the CPU: torch's parallel isfinite left its OpenMP threads spinning into the module's call,
    where they took the cores from TVM's workers (ResNet-18 at 2 threads ran 2× slower)."""
    bits = _EXPONENT_BITS.get(tensor.dtype)
    if tensor.device.type != "cpu" or bits is None:
        return bool(torch.isfinite(tensor).all())
    integer, mask = bits
    exponents = np.bitwise_and(tensor.detach().contiguous().view(integer).numpy(), mask)
    return not bool(np.any(exponents == mask))
