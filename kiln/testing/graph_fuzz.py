"""Differential fuzzing: random well-typed graphs through `kiln.compile`, compared with eager.

NNSmith's idea on `hypothesis`: a program is drawn op by op, each op's operands taken from the
values already made and its attributes (axes, strides, padding, groups, broadcasting) drawn so
that the op is legal for their shapes. `hypothesis` draws it, and on a failing check shrinks it
to a minimal graph. The program runs as an ordinary module (`RandomGraph`), so torch.export
captures it as it would a user's model.

`tests/testing/test_graph_fuzz.py` runs a fixed-seed sample in CI; `benchmarks/fuzz.py --graphs N` runs many
and classifies each outcome (`classify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from hypothesis import strategies as st
from torch import nn

from kiln.testing.compare import Verdict, disagreement

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """One op of a program: its name, the values it reads (indices), and its attributes."""

    op: str
    operands: tuple[int, ...]
    attributes: tuple[tuple[str, Any], ...] = ()

    def describe(self, index: int) -> str:
        attributes = ", ".join(f"{k}={v}" for k, v in self.attributes)
        return f"v{index} = {self.op}({', '.join(f'v{i}' for i in self.operands)}{', ' if attributes else ''}{attributes})"


@dataclass(frozen=True)
class Program:
    input_shapes: tuple[Shape, ...]
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def __str__(self) -> str:
        lines = [f"v{i}: {str(self.dtype).removeprefix('torch.')}{list(s)}" for i, s in enumerate(self.input_shapes)]
        lines += [step.describe(len(self.input_shapes) + i) for i, step in enumerate(self.steps)]
        return "\n".join(lines + [f"return {', '.join(f'v{i}' for i in self.outputs)}"])

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(shape, generator=generator).to(self.dtype) for shape in self.input_shapes)


def _conv(x: torch.Tensor, weight: torch.Tensor, attributes: dict[str, Any]) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, weight, stride=attributes["stride"], padding=attributes["padding"],
                                      groups=attributes["groups"])


# op name -> how it computes from its operand tensors, weight tensors and attributes
OPS: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda a, w, at: torch.relu(a[0]),
    "tanh": lambda a, w, at: torch.tanh(a[0]),
    "sigmoid": lambda a, w, at: torch.sigmoid(a[0]),
    "neg": lambda a, w, at: -a[0],
    "abs": lambda a, w, at: a[0].abs(),
    "sin": lambda a, w, at: torch.sin(a[0]),
    "gelu": lambda a, w, at: torch.nn.functional.gelu(a[0]),
    "add": lambda a, w, at: a[0] + a[1],
    "mul": lambda a, w, at: a[0] * a[1],
    "sub": lambda a, w, at: a[0] - a[1],
    "maximum": lambda a, w, at: torch.maximum(a[0], a[1]),
    "add_weight": lambda a, w, at: a[0] + w[0],
    "mul_weight": lambda a, w, at: a[0] * w[0],
    "linear": lambda a, w, at: torch.nn.functional.linear(a[0], w[0], w[1]),
    "matmul": lambda a, w, at: torch.matmul(a[0], a[1]),
    "conv2d": lambda a, w, at: _conv(a[0], w[0], at),
    "sum": lambda a, w, at: a[0].sum(at["dim"], keepdim=at["keepdim"]),
    "mean": lambda a, w, at: a[0].mean(at["dim"], keepdim=at["keepdim"]),
    "amax": lambda a, w, at: a[0].amax(at["dim"], keepdim=at["keepdim"]),
    "softmax": lambda a, w, at: torch.softmax(a[0], at["dim"]),
    "layer_norm": lambda a, w, at: torch.nn.functional.layer_norm(a[0], a[0].shape[-1:]),
    "reshape": lambda a, w, at: a[0].reshape(at["shape"]),
    "permute": lambda a, w, at: a[0].permute(at["order"]),
    "cat": lambda a, w, at: torch.cat([a[0], a[1]], at["dim"]),
    "slice": lambda a, w, at: a[0].narrow(at["dim"], at["start"], at["length"])[(slice(None),) * at["dim"] + (slice(None, None, at["step"]),)],
}


class RandomGraph(nn.Module):
    """A program as a module: weights drawn from a seed, ops replayed in order."""

    def __init__(self, program: Program, seed: int = 0) -> None:
        super().__init__()
        self.program = program
        generator = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList()
        self.weight_slots: list[tuple[int, ...]] = []
        for step in program.steps:
            shapes = dict(step.attributes).get("weights", ())
            slots = []
            for shape in shapes:
                slots.append(len(self.weights))
                self.weights.append(nn.Parameter((torch.randn(shape, generator=generator) * 0.5).to(program.dtype)))
            self.weight_slots.append(tuple(slots))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = list(inputs)
        for step, slots in zip(self.program.steps, self.weight_slots):
            attributes = dict(step.attributes)
            weights = [self.weights[i] for i in slots]
            values.append(OPS[step.op]([values[i] for i in step.operands], weights, attributes))
        return tuple(values[i] for i in self.program.outputs)


@st.composite
def programs(draw: st.DrawFn, max_steps: int = 8) -> Program:
    """A random well-typed program of 1..max_steps ops over one or two inputs."""
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float32, torch.float64]))
    dims = st.integers(1, 6)
    first = tuple(draw(st.lists(dims, min_size=2, max_size=4)))
    if len(first) == 4:  # an image: channels and spatial size a convolution can use
        first = (first[0], draw(st.integers(1, 8)), draw(st.integers(4, 12)), draw(st.integers(4, 12)))
    shapes = [first]
    if draw(st.booleans()):
        shapes.append(_broadcastable(draw, first))
    inputs = tuple(shapes)
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, max_steps))):
        step, shape = _draw_step(draw, shapes)
        steps.append(step)
        shapes.append(shape)
    last = len(shapes) - 1
    extra = draw(st.sampled_from(range(len(inputs), last + 1)))
    outputs = (last,) if extra == last else (extra, last)
    return Program(inputs, tuple(steps), outputs, dtype)


def _broadcastable(draw: st.DrawFn, shape: Shape) -> Shape:
    """A shape that broadcasts against `shape`: some dims 1, some leading ones dropped."""
    kept = draw(st.integers(1, len(shape)))
    return tuple(1 if draw(st.booleans()) else d for d in shape[len(shape) - kept:])


def _draw_step(draw: st.DrawFn, shapes: list[Shape]) -> tuple[Step, Shape]:
    index = draw(st.integers(0, len(shapes) - 1))
    shape = shapes[index]
    rank = len(shape)
    choices = ["relu", "tanh", "sigmoid", "neg", "abs", "sin", "gelu", "add_weight", "mul_weight", "linear", "sum",
               "mean", "amax", "softmax", "layer_norm", "reshape", "permute", "cat", "slice", "binary"]
    if rank == 4:
        choices += ["conv2d", "conv2d"]
    if rank >= 2:
        choices += ["matmul"]
    op = draw(st.sampled_from(choices))
    axis = draw(st.integers(0, rank - 1)) if rank else 0
    if op in ("relu", "tanh", "sigmoid", "neg", "abs", "sin", "gelu", "layer_norm"):
        return Step(op, (index,)), shape
    if op in ("add_weight", "mul_weight"):
        weight = _broadcastable(draw, shape)
        return Step(op, (index,), (("weights", (weight,)),)), _broadcast(shape, weight)
    if op == "binary":
        partners = [i for i, s in enumerate(shapes) if _broadcasts(shape, s)]
        other = draw(st.sampled_from(partners))
        name = draw(st.sampled_from(["add", "mul", "sub", "maximum"]))
        return Step(name, (index, other)), _broadcast(shape, shapes[other])
    if op == "linear":
        out = draw(st.integers(1, 8))
        return Step(op, (index,), (("weights", ((out, shape[-1]), (out,))),)), shape[:-1] + (out,)
    if op == "matmul":
        k, n = shape[-1], draw(st.integers(1, 6))
        partners = [i for i, s in enumerate(shapes) if len(s) >= 2 and s[-2] == k and s[:-2] == shape[:-2]]
        if partners and draw(st.booleans()):
            other = draw(st.sampled_from(partners))
            return Step(op, (index, other)), shape[:-1] + shapes[other][-1:]
        return Step("linear", (index,), (("weights", ((n, k), (n,))),)), shape[:-1] + (n,)
    if op == "conv2d":
        channels = shape[1]
        groups = draw(st.sampled_from([g for g in (1, 2, 4, channels) if channels % g == 0]))
        out = groups * draw(st.integers(1, 4))
        kernel, stride, padding = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
        if min(shape[2:]) + 2 * padding < kernel:
            return Step("relu", (index,)), shape
        size = tuple((d + 2 * padding - kernel) // stride + 1 for d in shape[2:])
        attributes = (("weights", ((out, channels // groups, kernel, kernel),)), ("stride", stride),
                      ("padding", padding), ("groups", groups))
        return Step(op, (index,), attributes), (shape[0], out) + size
    if op in ("sum", "mean", "amax"):
        keepdim = draw(st.booleans()) or rank == 1
        reduced = tuple(1 if i == axis else d for i, d in enumerate(shape)) if keepdim else shape[:axis] + shape[axis + 1:]
        return Step(op, (index,), (("dim", axis), ("keepdim", keepdim))), reduced
    if op == "softmax":
        return Step(op, (index,), (("dim", axis),)), shape
    if op == "reshape":
        total = 1
        for d in shape:
            total *= d
        if rank >= 2 and draw(st.booleans()):
            new = shape[:-2] + (shape[-2] * shape[-1],)
        else:
            new = (total,) if rank > 1 and draw(st.booleans()) else shape[:-1] + (1, shape[-1])
        return Step(op, (index,), (("shape", new),)), new
    if op == "permute":
        order = tuple(draw(st.permutations(range(rank))))
        return Step(op, (index,), (("order", order),)), tuple(shape[i] for i in order)
    if op == "cat":
        partners = [i for i, s in enumerate(shapes) if len(s) == rank and all(a == b for j, (a, b) in enumerate(zip(s, shape)) if j != axis)]
        other = draw(st.sampled_from(partners))
        joined = tuple(d + shapes[other][axis] if i == axis else d for i, d in enumerate(shape))
        return Step(op, (index, other), (("dim", axis),)), joined
    # slice
    start = draw(st.integers(0, shape[axis] - 1))
    length = draw(st.integers(1, shape[axis] - start))
    step = draw(st.integers(1, 2))
    sliced = tuple(-(-length // step) if i == axis else d for i, d in enumerate(shape))
    return Step("slice", (index,), (("dim", axis), ("start", start), ("length", length), ("step", step))), sliced


def _broadcasts(a: Shape, b: Shape) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def _broadcast(a: Shape, b: Shape) -> Shape:
    rank = max(len(a), len(b))
    a, b = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    return tuple(max(x, y) for x, y in zip(a, b))


# max |Δ| relative to the output's scale, per dtype
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}


def classify(program: Program, target: str = "llvm") -> Verdict:
    import kiln

    model, inputs = RandomGraph(program), program.inputs()
    with torch.no_grad():
        expected = model(*inputs)
    try:
        got = kiln.compile(model, inputs, target=target, threads=1)(*inputs)
    except kiln.KilnError as error:
        internal = isinstance(error, (kiln.BackendError, kiln.errors.InternalError))
        return Verdict("kiln error" if internal else "refused", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", program)
    except Exception as error:  # noqa: BLE001 - what the fuzzer exists to find
        return Verdict("crashed", f"{type(error).__name__}: {str(error)[:200]}", program)
    difference = disagreement(got, expected, TOLERANCE[program.dtype])
    if difference is not None:
        return Verdict("mismatched", difference, program)
    return Verdict("matched", "", program)
