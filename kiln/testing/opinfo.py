"""PyTorch's operator database (OpInfo: `torch.testing._internal.common_methods_invocations.op_db`,
every op's sample inputs as PyTorch's own tests use them) as a conformance suite for
`kiln.compile`.

A case is one sample of one op at one dtype (float32, and the op's first integer dtype): the
sample's tensors become the inputs of a small module that calls the op with the sample's other
arguments, and the module is compiled for `llvm` and compared with eager PyTorch, on the sample
and on a second input made by shuffling each tensor's elements (the same values, so the same
domain, in other places: what the example inputs alone would not show). Outcomes:

- ok: both calls give eager's outputs;
- wrong: a call returns other numbers than eager: the defect this suite exists to find;
- refused: a KilnError that names what Kiln cannot do (the numeric gate's included);
- crashed: any other exception (or, in `benchmarks/opinfo_conformance.py`, a dead process);
- not captured: torch.export itself cannot capture the module (not counted against Kiln);
- eager fails: the sample does not run eagerly (not counted).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from kiln.testing.compare import Verdict, disagreement

SAMPLES_PER_OP = 2
# ops whose values are undefined (uninitialized memory): only their outputs' structure, shapes and dtypes count
UNDEFINED_VALUES = {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}
TOLERANCE = 1e-4
INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass(frozen=True)
class Case:
    op: str  # the OpInfo's name, with its variant ("nn.functional.interpolate.bilinear")
    dtype: torch.dtype
    sample: int  # which of the op's samples at that dtype

    def __str__(self) -> str:
        return f"{self.op} {str(self.dtype).removeprefix('torch.')} #{self.sample}"


@functools.cache
def _op_db() -> dict[str, Any]:
    from torch.testing._internal.common_methods_invocations import op_db

    return {_name(op): op for op in op_db}


def _name(op) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def cases() -> list[Case]:
    """Every op's first SAMPLES_PER_OP samples at float32 and at its first integer dtype."""
    found = []
    for name, op in _op_db().items():
        supported = op.supported_dtypes("cpu")
        dtypes = [torch.float32] if torch.float32 in supported else []
        dtypes += [dtype for dtype in INTEGER_DTYPES if dtype in supported][:1]
        found += [Case(name, dtype, index) for dtype in dtypes for index in range(SAMPLES_PER_OP)]
    return found


class OpCall(torch.nn.Module):
    """One sample as a model: its tensors are the inputs, everything else is fixed."""

    def __init__(self, function, structure: pytree.TreeSpec, constants: list[Any], tensor_positions: list[int]) -> None:
        super().__init__()
        self.function, self.structure = function, structure
        self.constants, self.tensor_positions = constants, tensor_positions

    def forward(self, *tensors: torch.Tensor) -> Any:
        leaves = list(self.constants)
        for position, tensor in zip(self.tensor_positions, tensors):
            leaves[position] = tensor
        first, args, kwargs = pytree.tree_unflatten(leaves, self.structure)
        return self.function(first, *args, **kwargs)


def model_of(case: Case) -> tuple[OpCall, tuple[torch.Tensor, ...]] | None:
    """The case's module and its tensors; None where the op has fewer samples at that dtype."""
    op = _op_db()[case.op]
    torch.manual_seed(zlib.crc32(str(case).encode()))
    samples = op.sample_inputs("cpu", case.dtype, requires_grad=False)
    sample = next((s for index, s in enumerate(samples) if index == case.sample), None)
    if sample is None:
        return None
    leaves, structure = pytree.tree_flatten((sample.input, tuple(sample.args), dict(sample.kwargs)))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    constants = [None if i in positions else leaf for i, leaf in enumerate(leaves)]
    return OpCall(op.op, structure, constants, positions), tuple(leaves[i].detach().clone() for i in positions)


def shuffled(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Each tensor's elements in another order, drawn reproducibly."""
    generator = torch.Generator().manual_seed(1)
    return tuple(t.flatten()[torch.randperm(t.numel(), generator=generator)].reshape(t.shape).clone() for t in tensors)


def run(case: Case, target: str = "llvm") -> Verdict:
    import kiln

    built = model_of(case)
    if built is None:
        return Verdict("eager fails", "no such sample")
    model, tensors = built
    try:
        with torch.no_grad():
            expected = model(*[t.clone() for t in tensors])
    except Exception as error:  # noqa: BLE001 - a sample that does not run eagerly is not Kiln's to run
        return Verdict("eager fails", f"{type(error).__name__}: {error}")
    try:
        torch.export.export(model, tensors)
    except Exception as error:  # noqa: BLE001 - torch.export's limits, not Kiln's
        return Verdict("not captured", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    try:
        compiled = kiln.compile(model, tensors, target=target, cache=False, threads=1)
        calls = [(tensors, expected)]
        other = shuffled(tensors)
        try:
            with torch.no_grad():
                calls.append((other, model(*[t.clone() for t in other])))
        except Exception:  # noqa: BLE001 - shuffled values this op refuses (a matrix that is no longer invertible)
            pass
        for inputs, want in calls:
            got = compiled(*[t.clone() for t in inputs])
            if case.op in UNDEFINED_VALUES:
                got, want = (pytree.tree_map(lambda t: torch.zeros_like(t) if isinstance(t, torch.Tensor) else t, x)
                             for x in (got, want))
            difference = disagreement(got, want, TOLERANCE)
            if difference is not None:
                which = "the sample" if inputs is tensors else "shuffled inputs"
                return Verdict("wrong", f"on {which}: {difference}")
    except kiln.KilnError as error:
        return Verdict("refused", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    except Exception as error:  # noqa: BLE001 - what the suite exists to find
        return Verdict("crashed", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return Verdict("ok")
