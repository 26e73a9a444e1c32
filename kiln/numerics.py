"""The numeric contract: a build is returned only when it gives eager PyTorch's numbers on the
example inputs, within a tolerance relative to the outputs' scale.

Two comparisons make it, both on outputs Kiln computes anyway:
- the compiled module against Kiln's final graph run by PyTorch: what code generation did. For
  every pipeline, lossy or not, these must agree: a kernel that disagrees is found and named.
- the compiled module against the eager model: what the whole compilation did. For a pipeline
  of value-preserving passes only. Compression and quantization change the numbers on purpose;
  the report shows by how much (each lossy pass's row), and the user chose that.
The pass manager holds each value-preserving pass to a tenth of the tolerance as it runs, so a
broken rewrite is named where it happens.

The default tolerance follows the narrowest floating type the graph computes in: half precision
and int8 kernels round where float32 does not.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.fx

from kiln.errors import NumericsError
from kiln.ir.graph import Graph
from kiln.report.records import Drift, Report
from kiln.passes.registry import get_pass

FLOAT32_TOLERANCE = 1e-4
# the narrowest type the graph computes in -> the default tolerance (relative to the outputs' scale)
_BY_DTYPE = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.uint8: 1e-2, torch.int8: 1e-2}
# a value-preserving pass may move the outputs by this share of the tolerance
PASS_SHARE = 0.1
# a build over the tolerance is accepted if its distance from the float64 result is at most this
# multiple of PyTorch's float32 distance from it
ACCURACY_RATIO = 2.0
# after compression or quantization, code generation may add this share of the error they made
LOSSY_SHARE = 0.5


def default_tolerance(graph: Graph) -> float:
    """FLOAT32_TOLERANCE, or looser where the graph computes in half precision or int8 (a
    quantized layer's activations and weights). Integer index and mask tensors do not count."""
    tolerance = FLOAT32_TOLERANCE
    for node in graph.nodes:
        value = node.meta.get("val")
        dtype = getattr(value, "dtype", None)
        if dtype in (torch.uint8, torch.int8) and getattr(node.target, "namespace", None) != "kiln":
            continue  # int8 that is not a quantized layer's
        tolerance = max(tolerance, _BY_DTYPE.get(dtype, tolerance))
    return tolerance


def lossy_passes(report: Report) -> list[str]:
    """The passes of the report that changed the graph and do not promise its values (pruning,
    low-rank factorization, quantization, half precision)."""
    return [row.name for row in report.rows if row.stage == "kiln" and row.changes and not _preserves(row.name)]


def _preserves(name: str) -> bool:
    try:
        return get_pass(name).preserves_values
    except Exception:  # noqa: BLE001 - a row that is no registered pass (input, cache) changes nothing
        return True


def require_agreement(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor],
                      graph_outputs: Sequence[torch.Tensor], report: Report, tolerance: float,
                      locate_kernel: Callable[[], str], exact: Callable[[], Sequence[torch.Tensor] | None]) -> None:
    """Raise NumericsError, naming the kernel or pass where the numbers broke, unless `outputs`
    (the compiled module's, on the example inputs) agree with `graph_outputs` (Kiln's final graph
    run by PyTorch) and, for a pipeline without lossy passes, with `reference` (the eager model).
    Shapes and dtypes first: an empty output holds no number to be wrong, but its dtype can be.

    Where the drift is over the tolerance, the build is still accepted when it is within the
    tolerance of the exact result, or as close to it as PyTorch (twice PyTorch's own float32
    distance): `exact()` (the graph in float64, computed only then) is the yardstick. Two float32
    computations of a deep unnormalized network (VGG-19's last layer sums 4,096 products of
    values near 1e31) can be further apart than either is from the exact result. After a lossy
    pass, the build may add up to half the error the compression made to it."""
    for position, (got, want) in enumerate(zip(outputs, graph_outputs)):
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise NumericsError(
                f"the compiled module's output {position} is {str(got.dtype).removeprefix('torch.')}{list(got.shape)} where "
                f"Kiln's graph gives {str(want.dtype).removeprefix('torch.')}{list(want.shape)}: code generation broke it. "
                f"{_ADVICE}")
    lossy = lossy_passes(report)
    compression = Drift.between(graph_outputs, reference).max_rel if lossy else 0.0
    from_graph = Drift.between(outputs, graph_outputs)
    allowed = max(tolerance, LOSSY_SHARE * compression)
    if from_graph.exceeds(allowed) and not _as_accurate_as_pytorch(outputs, graph_outputs, exact, tolerance):
        raise NumericsError(
            f"the compiled module's outputs are {_share(from_graph)} of their scale away from Kiln's own graph run by "
            f"PyTorch on the example inputs (cosine {from_graph.cosine:.6f}; tolerance {tolerance:.0e}): code generation "
            f"broke the numbers. {_located(locate_kernel)} {_ADVICE}")
    if lossy:
        return
    from_eager = Drift.between(outputs, reference)
    if from_eager.exceeds(tolerance) and not _as_accurate_as_pytorch(outputs, reference, exact, tolerance):
        culprit = report.first_drift_over(tolerance)
        where = f"The first pass after which they are: '{culprit.name}'." if culprit is not None else ""
        raise NumericsError(
            f"the compiled module's outputs are {_share(from_eager)} of their scale away from the eager model's on the "
            f"example inputs (cosine {from_eager.cosine:.6f}; tolerance {tolerance:.0e}). {where} {_ADVICE}")


def float64_outputs(graph: Graph, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
    """`graph`'s outputs computed in float64 (its float32 weights, inputs and dtype arguments
    widened): the yardstick of `require_agreement`. None for a graph that computes in half
    precision or int8, whose rounding is its point."""
    if default_tolerance(graph) != FLOAT32_TOLERANCE:
        return None
    wide = graph.copy()
    module = wide.module
    widen = lambda value: torch.float64 if value is torch.float32 else value  # noqa: E731
    for node in module.graph.nodes:
        if node.op == "get_attr":
            value = wide.constant(node)
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                name = f"{str(node.target).replace('.', '_')}_float64"
                module.register_buffer(name, value.double())
                node.target = name
        node.args, node.kwargs = (torch.fx.node.map_aggregate(a, widen) for a in (node.args, node.kwargs))
    module.recompile()
    with torch.no_grad():
        return tuple(module(*[x.double() if x.dtype == torch.float32 else x for x in inputs]))


def _as_accurate_as_pytorch(outputs: Sequence[torch.Tensor], pytorch: Sequence[torch.Tensor],
                            exact: Callable[[], Sequence[torch.Tensor] | None], tolerance: float) -> bool:
    try:
        truth = exact()
    except Exception:  # noqa: BLE001 - a graph that does not run in float64: no yardstick, no exemption
        return False
    if truth is None:
        return False
    ours, theirs = Drift.between(outputs, truth), Drift.between(pytorch, truth)
    return ours.max_rel <= max(tolerance, ACCURACY_RATIO * theirs.max_rel)


def _located(locate_kernel: Callable[[], str]) -> str:
    try:
        return locate_kernel()
    except Exception as error:  # noqa: BLE001 - the build is refused either way; say why it could not be narrowed
        return f"(The kernels could not be compared one by one: {type(error).__name__}: {error}.)"


def cached_build_agrees(built: Drift | None, now: Drift, tolerance: float) -> bool:
    """Whether a cache entry may be served: on the example inputs it is no further from eager
    than its build was (twice that, or a tenth of the tolerance, whichever is more: other
    example inputs of the same shapes round differently)."""
    allowed = max(2 * built.max_rel, PASS_SHARE * tolerance) if built is not None else PASS_SHARE * tolerance
    return not now.exceeds(allowed)


def _share(drift: Drift) -> str:
    return f"{drift.max_rel:.2e}"


_ADVICE = ("The build is not returned. kiln.compile(..., debug_dir=...) writes the IR after every pass; tolerance= sets "
           "a looser bound, verify=False returns the build unchecked.")
