"""Named pipelines: which passes run at each optimization level, and the user's edits to them."""

from __future__ import annotations

from typing import Any, Sequence

from kiln.errors import PassError
from kiln.passes.registry import STAGES, get_pass

PassSpec = str | tuple[str, dict[str, Any]]

PIPELINES: dict[str, list[PassSpec]] = {
    "O0": [],
    "O1": ["remove_noops", "dce"],
    "O2": ["remove_noops", "fold_batch_norm", "fold_constants", "cse", "dce"],
    "O3": ["remove_noops", "fold_batch_norm", "fold_constants", "cse", "merge_parallel_linear", "dce"],
}
DEFAULT_LEVEL = "O3"


def _name(spec: PassSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def resolve_pipeline(
    opt_level: str = DEFAULT_LEVEL,
    passes: Sequence[PassSpec] | None = None,
    disable: Sequence[str] = (),
    stop_after: str | None = None,
    compression: Sequence[PassSpec] = (),
    quantization: Sequence[PassSpec] = (),
) -> list[tuple[str, dict[str, Any]]]:
    """The list of (pass name, options) to run: `compression` (what `prune=` and `low_rank=` ask
    for), then `passes` if given, else the level's pipeline, then `quantization` (`quantize=`);
    without the `disable`d passes, cut after the first pass named `stop_after`. Every pass is in
    the one list, so disabling, stopping, the IR dumps and bisection see compression and
    quantization like any other pass."""
    if passes is None:
        if opt_level not in PIPELINES:
            raise PassError(f"unknown optimization level '{opt_level}'; choose one of {', '.join(PIPELINES)}")
        passes = PIPELINES[opt_level]
    everything = [*compression, *passes, *quantization]
    for name in list(disable) + ([stop_after] if stop_after else []) + [_name(p) for p in everything]:
        get_pass(name)  # unknown names fail here, with the list of known ones
    resolved = [(s, {}) if isinstance(s, str) else (s[0], dict(s[1])) for s in everything if _name(s) not in disable]
    if stop_after is not None:
        names = [name for name, _ in resolved]
        if stop_after not in names:
            raise PassError(f"stop_after='{stop_after}' names a pass that is not in the pipeline {names}")
        resolved = resolved[: names.index(stop_after) + 1]
    return resolved


def check_order(pipeline: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """The pipeline's passes in the order of STAGES (compression, optimization, quantization;
    clean-ups anywhere): a PassError naming the first pass out of place and the one it follows."""
    latest: tuple[int, str] | None = None
    for name, _ in pipeline:
        stage = get_pass(name).stage
        if stage == "anywhere":
            continue
        rank = STAGES.index(stage)
        if latest is not None and rank < latest[0]:
            raise PassError(
                f"pass '{name}' ({stage}) comes after '{latest[1]}' ({STAGES[latest[0]]}): a pipeline compresses first "
                "(pruning ranks channels by the batch norms folding removes), optimizes, and quantizes last (it "
                "calibrates the graph that runs)")
        latest = (rank, name)
