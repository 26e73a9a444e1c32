"""Kiln's error hierarchy: every failure a user can cause is one of these, with a message that
names the op, node, shape or file involved."""

from __future__ import annotations

import contextlib
from typing import Iterator


class KilnError(Exception):
    """Base class of every error Kiln raises on purpose."""


class UnsupportedOpError(KilnError):
    """An operator that a backend (or frontend) cannot lower.

    Carries the op name and the model source line it came from, so the user can find it.
    """

    def __init__(self, op: str, node: str, source: str, backend: str) -> None:
        """`backend` names what refused it, as it reads in a sentence: "the TVM backend"."""
        self.op, self.node, self.source, self.backend = op, node, source, backend
        where = f"\n  from the model at:\n{source}" if source else " (no source location recorded)"
        super().__init__(f"operator {op} (node '{node}') is not supported by {backend}{where}")


class BackendError(KilnError):
    """A backend stage (an importer converter, a TVM pass, code generation) failed on a graph
    Kiln accepted: names the stage, and the op, node and model source line where known; for a
    TVM pass or codegen, `reproducer` is a script that replays the failure on its own."""

    def __init__(self, message: str, stage: str, node: str = "", op: str = "", source: str = "", reproducer: str = "") -> None:
        self.stage, self.node, self.op, self.source, self.reproducer = stage, node, op, source, reproducer
        super().__init__(message)


class InputMismatchError(KilnError, ValueError):
    """The inputs given to a compiled module do not match what it was compiled for."""


class NonFiniteInputError(InputMismatchError):
    """A float input holds NaN or an infinity, which a compiled module refuses unless compiled
    with allow_nonfinite_inputs=True."""


class ArtifactError(KilnError):
    """A file Kiln saved and reads back (an artifact, a tuning database, a bundle) that cannot be read or
    is refused: missing, truncated, corrupt, from another version, or unsafe to unpack or load."""


class PassError(KilnError):
    """A pass failed, or left the graph in a state that breaks the IR's invariants."""


class TargetError(KilnError, ValueError):
    """A target that Kiln does not know, or that cannot be built for on this machine."""


class FrontendError(KilnError):
    """The model could not be captured into Kiln's IR."""


class ValueRequiredError(FrontendError):
    """An operator needs the value of `name` (a shape, axes, pads) at import time, and the graph
    computes it from an input. Compiling for one value of that input (`onnx_backend` does) works."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class NumericsError(KilnError):
    """A build whose outputs disagree with eager PyTorch on the example inputs by more than the
    tolerance: it is not returned. Names the pass or the kernel where the numbers broke."""


class IndexOutOfRangeError(KilnError, IndexError):
    """A compiled module was called with an index (a token id, a gather's index) outside the
    tensor it indexes, as eager PyTorch refuses it: names the node, the model line, the bad index
    and the valid range. The call has no effect; the module keeps working."""


class InternalError(KilnError):
    """Something failed that no check of Kiln's anticipated: a Kiln defect, reported with the
    stage it happened in rather than as a bare exception from inside torch or TVM."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Within a public API: whatever escapes `name` as a non-Kiln exception becomes an
    InternalError naming the stage, the original chained as its cause."""
    try:
        yield
    except KilnError:
        raise
    except Exception as error:
        raise InternalError(f"{name} failed: {type(error).__name__}: {error} "
                            "(Kiln did not expect this: please report it with this message)") from error
