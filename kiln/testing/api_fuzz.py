"""A fuzzer of the whole API: random sessions of compile → call → compile again, over one shared
compile cache, with call-time inputs a hostile caller would give.

A session draws models from a few families (each one a way a build can go wrong: a constant
held as a plain tensor attribute, token ids, an index input, an input written in place, baked
keyword arguments, outputs that are Python values), each with its own shapes, dtype, constant,
dynamic batch, target (llvm, eager, onnxruntime), optimization level and thread count; the same
family often comes back with another constant or shape, which is what a sound cache must tell
apart. Each compiled module is then called with inputs drawn from: valid ones, another batch,
indices past either end, NaN and infinities, non-contiguous and channels-last tensors, numpy
arrays, and the wrong dtype, shape or count.

The oracle: every call gives what the eager model gives on the same inputs (outputs, and inputs
written in place), or raises a KilnError; a call eager refuses must be refused; after a refused
call the module still answers a valid one correctly. Anything else is an outcome other than
"matched"/"refused": "wrong" (other numbers, or an input eager refuses accepted) or "crashed"
(an exception that is no KilnError). `tests/testing/test_api_fuzz.py` runs a fixed-seed sample;
`python benchmarks/fuzz.py --api --cases N` runs many, each in a worker process a crash cannot take down.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.utils._pytree as pytree
from hypothesis import strategies as st
from torch import nn

from kiln.testing.compare import Verdict, disagreement

FAMILIES = ("affine", "conv", "embedding", "gather", "in_place", "keywords", "values")
HOSTILE = ("valid", "other_batch", "index_high", "index_negative", "nan", "inf", "non_contiguous", "channels_last",
           "numpy", "wrong_dtype", "wrong_shape", "wrong_count")
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}


@dataclass(frozen=True)
class ModelSpec:
    family: str
    width: int
    constant: float
    seed: int
    dtype: torch.dtype


@dataclass(frozen=True)
class Compile:
    model: ModelSpec
    batch: int
    dynamic: bool
    target: str
    opt_level: str
    threads: int | None
    calls: tuple[str, ...]


@dataclass
class Session:
    compiles: tuple[Compile, ...]
    outcomes: list[Verdict] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(f"compile {c.model} batch={c.batch} dynamic={c.dynamic} target={c.target} {c.opt_level} "
                         f"threads={c.threads}; calls {', '.join(c.calls)}" for c in self.compiles)


class Affine(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(spec.width, spec.width)
        self.c = torch.tensor(spec.constant)  # a plain attribute: torch.export lifts it as a constant

    def forward(self, x):
        return torch.tanh(self.linear(x)) * self.c


class Conv(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, spec.width, 3, padding=1)
        self.scale = spec.constant

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.scale


class Embedding(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.table = nn.Embedding(spec.width * 2, 8)

    def forward(self, ids):
        return self.table(ids).mean(1)


class Gather(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.randn(spec.width, 3))

    def forward(self, x, i):
        return self.rows[i] * x.sum()


class InPlace(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.constant = spec.constant

    def forward(self, x):
        x.add_(self.constant)
        return x * 2


class Keywords(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(spec.width, 4)

    def forward(self, x, scale: float = 1.0, flip: bool = False):
        y = self.linear(x) * scale
        return y.flip(-1) if flip else y


class Values(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.constant = spec.constant

    def forward(self, x):
        return {"sum": x.sum(-1) + self.constant, "width": x.shape[-1], "nothing": None, "tag": ("v", 1)}


_MODELS: dict[str, type[nn.Module]] = {"affine": Affine, "conv": Conv, "embedding": Embedding, "gather": Gather,
                                       "in_place": InPlace, "keywords": Keywords, "values": Values}


def model_of(spec: ModelSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    model = _MODELS[spec.family](spec).eval()
    return model.to(spec.dtype) if spec.family not in ("embedding",) else model


def example(spec: ModelSpec, batch: int, generator: torch.Generator) -> tuple[tuple, dict]:
    """Inputs of `batch` rows for a model of `spec`: (args, kwargs)."""
    randn = lambda *shape: torch.randn(*shape, generator=generator).to(spec.dtype)  # noqa: E731
    if spec.family == "conv":
        return (randn(batch, 3, 6, 6),), {}
    if spec.family == "embedding":
        return (torch.randint(0, spec.width * 2, (batch, 5), generator=generator),), {}
    if spec.family == "gather":
        return (randn(batch, 2), torch.randint(-spec.width, spec.width, (batch,), generator=generator)), {}
    if spec.family == "keywords":
        return (randn(batch, spec.width),), {"scale": spec.constant, "flip": bool(spec.seed % 2)}
    return (randn(batch, spec.width),), {}


def hostile(kind: str, spec: ModelSpec, batch: int, generator: torch.Generator) -> tuple[tuple, dict]:
    """Call-time inputs of the kind named (HOSTILE), for a model compiled at `batch`."""
    args, kwargs = example(spec, batch, generator)
    args = list(args)
    integer = [i for i, a in enumerate(args) if not a.dtype.is_floating_point]
    floating = [i for i, a in enumerate(args) if a.dtype.is_floating_point]
    if kind == "other_batch":
        return example(spec, batch + 1 + int(torch.randint(0, 3, (), generator=generator)), generator)
    if kind in ("index_high", "index_negative") and integer:
        index = args[integer[0]].clone()
        index.view(-1)[0] = (spec.width * 2 + 7) if kind == "index_high" else -(spec.width * 2 + 7)
        args[integer[0]] = index
    elif kind in ("nan", "inf") and floating:
        value = args[floating[0]].clone()
        value.view(-1)[0] = float("nan") if kind == "nan" else float("inf")
        args[floating[0]] = value
    elif kind == "non_contiguous":
        args = [a.transpose(0, -1).contiguous().transpose(0, -1) if a.dim() > 1 else a[::1] for a in args]
    elif kind == "channels_last":
        args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args]
    elif kind == "numpy":
        return tuple(a.numpy() for a in args), kwargs
    elif kind == "wrong_dtype":
        args = [a.to(torch.float16) if a.dtype.is_floating_point else a.to(torch.int32) for a in args]
    elif kind == "wrong_shape":
        args = [a.unsqueeze(-1) for a in args]
    elif kind == "wrong_count":
        args = args + [args[0]]
    return tuple(args), kwargs


def _copies(value: Any) -> Any:
    return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x.copy() if isinstance(x, np.ndarray) else x,
                           value)


def _call(function: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any, BaseException | None]:
    """(outputs, the inputs after the call, the exception raised)."""
    args, kwargs = _copies(args), _copies(kwargs)
    try:
        with torch.no_grad():
            return function(*args, **kwargs), (args, kwargs), None
    except BaseException as error:  # noqa: BLE001 - compared, not raised
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return None, (args, kwargs), error


def _eager(model: nn.Module, args: tuple, kwargs: dict):
    as_tensors = pytree.tree_map(lambda x: torch.from_numpy(x) if isinstance(x, np.ndarray) else x, (args, kwargs))
    return _call(model, *as_tensors)


def _tolerance(outputs: Any) -> float:
    """The comparison's tolerance: float32's where any float output is float32 (an embedding
    table stays float32 in a float64 session), float64's otherwise."""
    dtypes = {x.dtype for x in pytree.tree_leaves(outputs) if isinstance(x, torch.Tensor) and x.is_floating_point()}
    return TOLERANCE[torch.float64] if dtypes == {torch.float64} else TOLERANCE[torch.float32]


def check_call(model: nn.Module, compiled, kind: str, args: tuple, kwargs: dict) -> Verdict:
    import kiln

    expected, eager_after, eager_error = _eager(model, args, kwargs)
    got, kiln_after, kiln_error = _call(compiled, args, kwargs)
    if kiln_error is not None and not isinstance(kiln_error, kiln.KilnError):
        return Verdict("crashed", f"{kind}: {type(kiln_error).__name__}: {str(kiln_error)[:300]}")
    if kiln_error is not None:
        return Verdict("refused", f"{kind}: {type(kiln_error).__name__}: {str(kiln_error).splitlines()[0][:200]}")
    if eager_error is not None:
        return Verdict("wrong", f"{kind}: eager raises {type(eager_error).__name__}: {str(eager_error)[:120]}; Kiln returned outputs")
    as_tensors = lambda value: pytree.tree_map(lambda x: torch.from_numpy(x) if isinstance(x, np.ndarray) else x, value)  # noqa: E731
    tolerance = _tolerance(expected)
    difference = disagreement(got, expected, tolerance) or disagreement(as_tensors(kiln_after), as_tensors(eager_after), tolerance)
    return Verdict("wrong", f"{kind}: {difference}") if difference else Verdict("matched", kind)


def sessions() -> st.SearchStrategy[Session]:
    """Sessions of 1-4 compiles; a family drawn again keeps some of its spec (another constant,
    batch or dtype on the same model), which is what the shared cache must tell apart."""

    @st.composite
    def draw(draw_value) -> Session:
        compiles = []
        for _ in range(draw_value(st.integers(1, 4))):
            earlier = [c.model for c in compiles]
            if earlier and draw_value(st.booleans()):
                base = draw_value(st.sampled_from(earlier))
                model = ModelSpec(base.family, base.width, draw_value(st.sampled_from([base.constant, 2.0, 3.0, -0.5])),
                                  base.seed, draw_value(st.sampled_from([base.dtype, torch.float64])))
            else:
                model = ModelSpec(draw_value(st.sampled_from(FAMILIES)), draw_value(st.integers(2, 6)),
                                  draw_value(st.sampled_from([2.0, 3.0, -0.5])), draw_value(st.integers(0, 3)), torch.float32)
            compiles.append(Compile(
                model, draw_value(st.integers(2, 3)), draw_value(st.booleans()),
                draw_value(st.sampled_from(["llvm", "llvm", "eager", "onnxruntime"])),
                draw_value(st.sampled_from(["O0", "O2", "O3"])), draw_value(st.sampled_from([None, 1])),
                tuple(draw_value(st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=4)))))
        return Session(tuple(compiles))

    return draw()


def run_session(session: Session, cache_dir: str | None = None) -> Session:
    """Every compile and call of `session`, into one compile cache (a fresh folder by default);
    each outcome appended to `session.outcomes`."""
    import kiln

    folder = cache_dir or tempfile.mkdtemp(prefix="kiln-api-fuzz-")
    saved = {name: os.environ.get(name) for name in ("KILN_CACHE_DIR", "KILN_CACHE")}
    os.environ.update({"KILN_CACHE_DIR": folder, "KILN_CACHE": "on"})
    try:
        for number, step in enumerate(session.compiles):
            spec = step.model
            model = model_of(spec)
            generator = torch.Generator().manual_seed(number)
            args, kwargs = example(spec, step.batch, generator)
            try:
                compiled = kiln.compile(model, _copies(args), example_kwargs=_copies(kwargs), target=step.target,
                                        opt_level=step.opt_level, threads=step.threads, dynamic_batch=step.dynamic)
            except kiln.KilnError as error:
                session.outcomes.append(Verdict("refused", f"compile: {type(error).__name__}: {str(error).splitlines()[0][:200]}"))
                continue
            except Exception as error:  # noqa: BLE001 - what the fuzzer exists to find
                session.outcomes.append(Verdict("crashed", f"compile: {type(error).__name__}: {str(error)[:300]}"))
                continue
            for kind in step.calls:
                outcome = check_call(model, compiled, kind, *hostile(kind, spec, step.batch, generator))
                session.outcomes.append(outcome)
                if outcome.kind == "refused":  # the module keeps working
                    after = check_call(model, compiled, "valid after a refused call", *example(spec, step.batch, generator))
                    if after.kind != "matched":
                        session.outcomes.append(after)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return session
