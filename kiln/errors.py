"""Kiln's error hierarchy: every failure a user can cause is one of these, with a message that
names the op, node, shape or file involved."""


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


class InputMismatchError(KilnError, ValueError):
    """The inputs given to a compiled module do not match what it was compiled for."""


class ArtifactError(KilnError):
    """A saved Kiln artifact that cannot be read: missing, truncated, corrupt or from another version."""


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
