"""`kiln.compile`: capture → graph passes → backend, with the whole run in one report."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar, Union

import torch
import torch.utils._pytree as pytree

from kiln.backends import BuildContext, build, get_backend, resolve_target
from kiln.cache import CompileCache, graph_key, versions, warn_unusable
from kiln.errors import FrontendError, KilnError, NumericsError, TargetError, stage
from kiln.fingerprint import model_fingerprint, recording_sources, source_hashes
from kiln.ir.graph import Graph
from kiln.ir.torch_frontend import from_torch, inference_mode
from kiln.module import CompiledModule
from kiln.numerics import (FLOAT32_TOLERANCE, PASS_SHARE, cached_build_agrees, default_tolerance, float64_outputs, lossy_passes,
                           require_agreement)
from kiln.passes import BisectResult, PassManager, resolve_pipeline
from kiln.pipeline import compile_graph
from kiln.passes.bisect import bisect as bisect_pipeline
from kiln.passes.low_rank import LowRank, low_rank_passes
from kiln.passes.pipelines import DEFAULT_LEVEL, PassSpec
from kiln.passes.pruning import Prune, pruning_passes
from kiln.passes.quantization import Quantize, quantization_passes
from kiln.report.debug_dir import DebugDir
from kiln.report.records import Drift, PassRecord, Report
from kiln.signature import Signature


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _progress(verbose: bool):
    if not verbose:
        return None
    return lambda message: print(f"[kiln] {message}", file=sys.stderr, flush=True)


Model = Union[torch.nn.Module, str, Path, "onnx.ModelProto"]


def capture(
    model: Model,
    example_inputs: Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    dynamic_batch: bool = False,
    input_shapes: dict[str, Sequence[int]] | None = None,
    dynamic_shapes: Any = None,
    sources: set[str] | None = None,
) -> tuple[Graph, list[torch.Tensor], list[torch.Tensor]]:
    """The model's graph, its flat example inputs, and the eager outputs every drift is measured
    against. An ONNX model (path or ModelProto) becomes a torch module first (kiln/ir/onnx/frontend.py);
    its example inputs default to random tensors of the graph's input shapes."""
    if not isinstance(model, torch.nn.Module):
        from kiln.ir.onnx.frontend import onnx_module

        model, generated = onnx_module(model, input_shapes)
        example_inputs = example_inputs or generated
    graph = from_torch(model, example_inputs, example_kwargs, dynamic_batch=dynamic_batch, dynamic_shapes=dynamic_shapes)
    returns: list = []
    reference = eager_outputs(model, example_inputs, example_kwargs, graph.flatten_inputs, graph.mutated_inputs, returns,
                              sources)
    if returns[0] != graph.out_spec and returns[0].num_leaves == graph.out_spec.num_leaves:
        graph.out_spec = returns[0]  # what eager returns (a torch.Size, where export's structure says tuple)
    return graph, graph.flatten_inputs(example_inputs, example_kwargs), reference


def eager_outputs(model: torch.nn.Module, example_inputs: Sequence[Any], example_kwargs: dict[str, Any] | None,
                  flatten: Callable[[Sequence[Any], dict[str, Any] | None], list[Any]] | None = None,
                  written: Sequence[int] = (), returns: list | None = None, sources: set[str] | None = None) -> list[torch.Tensor]:
    """The model's tensor outputs on the example inputs, run eagerly in inference mode, then the
    new values of the flat inputs at `written` (those it writes in place; `flatten` gives the
    flat inputs): what drift is measured against. The model runs on copies of the inputs, so the
    caller's stay as they were. `returns`, where given, receives the outputs' structure and their
    leaves that are not tensors, by position; `sources` the files the forward ran code from."""
    args, kwargs = pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x,
                                   (tuple(example_inputs), dict(example_kwargs or {})))
    with inference_mode(model):
        try:
            with torch.no_grad(), recording_sources(sources) if sources is not None else contextlib.nullcontext():
                outputs = model(*args, **kwargs)
        except Exception as error:
            raise FrontendError(f"{type(model).__name__} failed when run eagerly on the example inputs: "
                                f"{type(error).__name__}: {error}") from error
    leaves, structure = pytree.tree_flatten(outputs)
    if returns is not None:
        returns.extend([structure, [(position, leaf) for position, leaf in enumerate(leaves) if not isinstance(leaf, torch.Tensor)]])
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if written:
        flat = flatten(args, kwargs)
        tensors += [flat[position] for position in written]
    return tensors


def compile(  # noqa: A001 - the public name users expect
    model: Model,
    example_inputs: Sequence[Any] = (),
    *,
    example_kwargs: dict[str, Any] | None = None,
    target: str | dict[str, Any] = "llvm",
    opt_level: str = DEFAULT_LEVEL,
    passes: Sequence[PassSpec] | None = None,
    disable: Sequence[str] = (),
    stop_after: str | None = None,
    dynamic_batch: bool = False,
    dynamic_shapes: Any = None,
    debug_dir: str | Path | None = None,
    threads: int | None = None,
    tuning_dir: str | Path | None = None,
    remote: str | None = None,
    input_shapes: dict[str, Sequence[int]] | None = None,
    quantize: str | Quantize | None = None,
    calibration: Sequence[Any] | None = None,
    prune: Prune | None = None,
    low_rank: LowRank | None = None,
    cache: bool = True,
    tolerance: float | None = None,
    verify: bool = True,
    allow_nonfinite_inputs: bool = False,
    verbose: bool = False,
) -> CompiledModule:
    """Compile `model` (a torch module, or an ONNX file or ModelProto) for `target`.

    The report (`.report`) has a row per pass, Kiln's and the backend's, with time, statistics and
    the drift of the outputs from the eager model on `example_inputs`. With `debug_dir`, the IR
    after every pass is written there as numbered files beside the report and a drift table.
    `dynamic_shapes` makes any dims free sizes, in torch.export's spelling (`{"input_ids": {1:
    torch.export.Dim("seq", max=512)}}`); `dynamic_batch=True` is the short form for dim 0 of
    every input. Non-tensor `example_kwargs` (`use_cache=False`) are compiled in as constants. `threads` is the number of
    CPU threads the compiled code runs on (default: every core; TVM_NUM_THREADS caps it).
    Schedules tuned by `kiln.tune` for this CPU are used automatically; `tuning_dir` says where the
    databases are (default: $KILN_TUNING_DIR, else ~/.cache/kiln/tuning).
    Edge-board targets ("rpi4", "aarch64", ...) are cross-compiled here; with `remote="host:port"`
    the module is uploaded to the board's TVM RPC server, runs there, and its drift from eager is
    measured on the board (the report's "remote" row). For an ONNX model, `input_shapes` gives the
    shapes of inputs the graph leaves symbolic ({"input": [1, 3, 224, 224]}).
    `quantize="int8"` (or `kiln.Quantize(method="mse", keep_float=(...))`) adds static int8
    quantization, calibrated on `calibration` (a few batches of real inputs, each a tuple of the
    model's arguments); the report's quantize_int8 row shows the layers quantized, the weight
    bytes before and after, and the drift from fp32. `prune=kiln.Prune(ratio=0.5)` removes that
    fraction of the channels of every conv/linear layer whose channels can go (with everything that
    depends on them) and of every attention block's heads, keeping channel counts a multiple of
    the target's vector width. `low_rank=kiln.LowRank(energy=0.9)` factorizes linear and conv
    layers where that makes them cheaper. Compression runs before the optimization pipeline.
    A TVM build is kept in the compile cache (kiln/cache.py: $KILN_CACHE_DIR, default
    ~/.cache/kiln/compiled): compiling the same captured model with the same options and target
    again, in any process, loads it (the report's "cache" row says so) instead of building.
    `cache=False`, or `debug_dir` (which wants every pass's IR), builds anew.
    `tolerance` bounds how far the compiled module's outputs may be from the eager model's on the
    example inputs, relative to their scale (default: 1e-4, looser where the graph computes in
    half precision or int8: kiln/numerics.py). A build further away is not returned: a
    NumericsError names the pass or kernel where the numbers broke. With compression or
    quantization the module is held to Kiln's own compressed graph instead (the report shows what
    the compression cost). `verify=False` returns the build unchecked. The module refuses float
    inputs holding NaN or infinities (its kernels do not carry them as eager does: TVM's relu of
    NaN is 0) unless `allow_nonfinite_inputs=True`.
    """
    resolved = resolve_target(target)
    pipeline = _pipeline(resolved, opt_level, passes, disable, stop_after, quantize, calibration, prune, low_rank)
    progress = _progress(verbose)
    debug = DebugDir(debug_dir)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise TargetError(f"threads={threads!r}: give a positive number of CPU threads, or None for every core")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise KilnError(f"tolerance={tolerance!r}: give a positive share of the outputs' scale (1e-3), or None for the default")
    calibration_tensors = pytree.tree_leaves(list(calibration or []))

    compile_cache = usable_cache(cache, resolved) if debug_dir is None else None
    options = _cached(lambda: {**build_identity(resolved, tuning_dir), "pipeline": pipeline, "threads": threads,
                               "allow_nonfinite_inputs": allow_nonfinite_inputs},
                      "reading the build's identity") if compile_cache else None
    compile_cache = compile_cache if options is not None else None
    fingerprint = None
    if compile_cache is not None and isinstance(model, torch.nn.Module):
        start = time.perf_counter()
        fingerprint = _cached(lambda: model_fingerprint(model, example_inputs, example_kwargs, {
            **options, "dynamic_batch": dynamic_batch, "dynamic_shapes": repr(dynamic_shapes), "versions": versions()},
            calibration_tensors), "fingerprinting the model")
        if fingerprint is not None:
            found = _by_fingerprint(compile_cache, fingerprint, model, example_inputs, example_kwargs, start, tolerance)
            if found is not None:
                module, inputs, reference = found
                module.defer_graph(lambda: _graph_of_unchanged(model, fingerprint, example_inputs, example_kwargs, options,
                                                               calibration_tensors, dynamic_batch, input_shapes, dynamic_shapes,
                                                               pipeline))
                return _on_board(module, remote, inputs, reference, None, tolerance, verify)
    sources: set[str] = set()
    with stage("capture"):
        graph, inputs, reference = capture(model, example_inputs, example_kwargs, dynamic_batch, input_shapes, dynamic_shapes,
                                           sources if fingerprint is not None else None)
    given_tolerance, tolerance = tolerance, tolerance if tolerance is not None else default_tolerance(graph)
    key = _cached(lambda: graph_key(graph, options, calibration_tensors), "naming the build") if compile_cache else None
    dropped = ""
    if key is not None:
        start = time.perf_counter()
        cached, dropped = load_checked(compile_cache, key, inputs, reference, tolerance, start)
        if cached is not None:
            if fingerprint is not None:
                compile_cache.remember(fingerprint, key, source_hashes(sources))
            cached.defer_graph(lambda: PassManager(pipeline).run(graph)[0])
            return _on_board(cached, remote, inputs, reference, None, tolerance, verify)
    backend = get_backend(resolved.backend)
    context = BuildContext(resolved, Report(), debug, inputs, reference, progress, threads, _path(tuning_dir))
    with stage(f"compiling for {resolved.name}"):
        executable, graph, outputs = compile_graph(graph, pipeline, backend, context, verify, PASS_SHARE * tolerance)
    report = context.report
    if dropped:  # on the last graph pass's row: what the build starts from
        last_pass = [row for row in report.rows if row.stage == "kiln"][-1]
        last_pass.note = f"{last_pass.note}; {dropped}".strip("; ")
    tolerance = given_tolerance if given_tolerance is not None else default_tolerance(graph)  # after half precision, int8
    if verify and _runs_here(executable):
        with stage("checking the build against eager"):
            ran = outputs.executable_outputs if outputs.executable_outputs is not None else executable(inputs)
            require_agreement(ran, reference, outputs.graph_outputs, report, tolerance,
                              lambda: backend.locate_disagreement(executable, graph, inputs, tolerance),
                              lambda: float64_outputs(graph, inputs))
    compiled = CompiledModule(executable, Signature.of(graph, not allow_nonfinite_inputs), resolved, report, threads, graph)
    # a build this machine cannot run (CUDA without a GPU) would be loaded only to be refused
    if key is not None and (resolved.cross or _runs_here(executable)):
        _cached(lambda: compile_cache.store_in_background(key, compiled), "storing the build")
        if fingerprint is not None:
            compile_cache.remember(fingerprint, key, source_hashes(sources))
    compiled = _on_board(compiled, remote, inputs, reference, progress, tolerance, verify)
    debug.write_report(report)
    if debug.enabled:
        _write_html_report(compiled, debug.path, inputs, progress)
    return compiled


def _runs_here(executable) -> bool:
    return getattr(executable, "why_not_here", lambda: None)() is None


T = TypeVar("T")


def _cached(step: Callable[[], T], what: str) -> T | None:
    """A step of the compile cache, whose failure costs this compile the cache, never its result:
    any exception is a warning, and the compile goes on without the cache."""
    try:
        return step()
    except Exception as error:  # noqa: BLE001 - the cache is a shortcut; Kiln builds without it
        warn_unusable(f"{what} for the compile cache failed ({type(error).__name__}: {error}); building without the cache")
        return None


def _write_html_report(compiled: CompiledModule, folder: Path, inputs, progress) -> None:
    """report.html in the debug directory, with the per-kernel profile where the module runs here."""
    import json

    from kiln.report import PROFILE_FILE, write_report

    if progress is not None:
        progress("HTML report (profile, graphs)")
    if compiled.target.backend == "tvm" and getattr(compiled.executable, "why_not_here", lambda: "remote")() is None:
        with stage("profiling the module for the debug report"):
            (folder / PROFILE_FILE).write_text(json.dumps(compiled.executable_profile(inputs).to_json()))
    with stage("writing the HTML report"):
        write_report(folder)


def _on_board(compiled: CompiledModule, remote: str | None, inputs, reference, progress, tolerance: float | None,
              verify: bool) -> CompiledModule:
    """With `remote`, the module uploaded to the board and its drift measured there (a row); a
    board that computes other numbers than this machine's build is refused as a build is."""
    if remote is None:
        return compiled
    if progress is not None:
        progress(f"upload to the board at {remote}")
    start = time.perf_counter()
    with stage(f"running on the board at {remote}"):
        compiled = compiled.to_remote(remote)
        outputs = compiled.executable(inputs)
    drift = Drift.between(outputs, reference)
    report = compiled.report
    report.add(PassRecord(report.next_index(), "remote", "board", time.perf_counter() - start, note=remote, drift=drift))
    tolerance = tolerance if tolerance is not None else FLOAT32_TOLERANCE
    if verify and not lossy_passes(report) and drift.exceeds(tolerance):
        raise NumericsError(f"the module run on the board at {remote} gives outputs {drift.max_rel:.2e} of their scale "
                            f"away from the eager model's (tolerance {tolerance:.0e}); verify=False returns it unchecked")
    return compiled


def build_identity(resolved, tuning_dir: str | Path | None) -> dict[str, Any]:
    """What a cache key holds about where the build runs (the backend says: for TVM, the target
    with its CPU features and the tuning records a build for it would apply)."""
    return get_backend(resolved.backend).identity(resolved, _path(tuning_dir))


def usable_cache(wanted: bool, resolved) -> CompileCache | None:
    """The compile cache, for TVM builds when it is wanted (and KILN_CACHE is not "off") and
    its folder is safe to load from; a folder that is not is said in a warning."""
    if not wanted or resolved.backend != "tvm" or os.environ.get("KILN_CACHE", "").lower() in ("0", "off", "no"):
        return None
    compile_cache = CompileCache()
    reason = compile_cache.usable()
    if reason is not None:
        warn_unusable(reason)
        return None
    return compile_cache


def load_checked(compile_cache: CompileCache, key: str, inputs, reference, tolerance: float,
                  start: float) -> tuple[CompiledModule | None, str]:
    """The entry under `key`, when it runs on the example inputs as close to the eager model as
    its build did (kiln/numerics.py); else None, the entry dropped, and a note saying why."""
    cached, note = _cached(lambda: compile_cache.load(key), "loading an entry") or (None, "")
    if cached is None:
        if note:
            warn_unusable(note)
        return None, note
    return _checked_entry(compile_cache, key, cached, inputs, reference, tolerance, start)


def _checked_entry(compile_cache: CompileCache, key: str, cached: CompiledModule, inputs, reference, tolerance: float,
                   start: float) -> tuple[CompiledModule | None, str]:
    if not _runs_here(cached.executable):
        return with_cache_row(cached, key, time.perf_counter() - start, None), ""
    built = _build_drift(cached.report)
    now = _cached(lambda: Drift.between(cached.executable(inputs), reference), "running an entry")
    if now is None or not cached_build_agrees(built, now, tolerance):
        _cached(lambda: compile_cache.drop(key), "dropping an entry")
        measured = f"{now.max_rel:.2e}" if now is not None else "not measured"
        return None, (f"cache entry {key[:12]} dropped and rebuilt: its outputs were {measured} of their scale from "
                      f"eager, its build's {built.max_rel if built is not None else float('nan'):.2e}")
    return with_cache_row(cached, key, time.perf_counter() - start, now), ""


def _build_drift(report: Report) -> Drift | None:
    """The drift the build measured last (its code generation's, or its last pass's)."""
    return next((row.drift for row in reversed(report.rows) if row.drift is not None and row.stage != "board"), None)


def with_cache_row(cached: CompiledModule, key: str, seconds: float, drift: Drift | None, how: str = "") -> CompiledModule:
    """The cached module, its report the build's own plus a "cache" row: the drift measured now."""
    report = cached.report
    report.add(PassRecord(report.next_index(), "cache", "kiln", seconds, drift=drift, note=f"from cache {key[:16]}{how}"))
    return cached


def _by_fingerprint(compile_cache: CompileCache, fingerprint: str, model: torch.nn.Module, example_inputs, example_kwargs,
                    start: float, tolerance: float | None) -> tuple[CompiledModule, list[torch.Tensor], list[torch.Tensor]] | None:
    """The entry the model's fingerprint names, with the flat example inputs and eager outputs it
    was checked on: held to the same rule as an entry found by its captured graph
    (`_checked_entry`). None (and the fingerprint forgotten) otherwise."""
    recorded = compile_cache.key_of(fingerprint)
    if recorded is None:
        return None
    key, built_from = recorded
    cached, note = _cached(lambda: compile_cache.load(key), "loading an entry") or (None, "")
    if cached is None:
        if note:
            warn_unusable(note)
        return None
    signature = cached.signature
    try:
        inputs = signature.flatten(tuple(example_inputs), dict(example_kwargs or {}))
    except KilnError:  # other inputs than the build's: this is not that model
        compile_cache.forget(fingerprint)
        return None
    returns: list = []
    sources: set[str] = set()
    reference = eager_outputs(model, example_inputs, example_kwargs, signature.flatten, signature.mutated_inputs, returns, sources)
    if returns != [signature.out_spec, [(c.position, c.value) for c in signature.constant_outputs]] or \
            source_hashes(sources) != built_from:
        compile_cache.forget(fingerprint)  # the model returns something else, or ran other code, than that build's did
        return None
    cached, _ = _checked_entry(compile_cache, key, cached, inputs, reference, tolerance or FLOAT32_TOLERANCE, start)
    if cached is None:
        compile_cache.forget(fingerprint)
        return None
    cached.report.rows[-1].note += " (model fingerprint)"
    return cached, inputs, reference


def _graph_of_unchanged(model: torch.nn.Module, fingerprint: str, example_inputs, example_kwargs, options, calibration_tensors,
                        dynamic_batch, input_shapes, dynamic_shapes, pipeline) -> Graph:
    """The optimized graph of a module found by the model's fingerprint (which skipped the
    capture): captured and optimized now, from the model as it was compiled."""
    now = model_fingerprint(model, example_inputs, example_kwargs, {
        **options, "dynamic_batch": dynamic_batch, "dynamic_shapes": repr(dynamic_shapes), "versions": versions()},
        calibration_tensors)
    if now != fingerprint:
        raise KilnError("the model changed after it was compiled (its weights, attributes or code): the optimized graph "
                        "of the compiled module cannot be derived from it any more; compile again")
    graph, _, _ = capture(model, example_inputs, example_kwargs, dynamic_batch, input_shapes, dynamic_shapes)
    return PassManager(pipeline).run(graph)[0]


def _pipeline(resolved, opt_level: str, passes, disable, stop_after, quantize, calibration, prune, low_rank) -> list:
    """The one list of passes a compile runs: what `prune=` and `low_rank=` ask for, the level's
    (or `passes=`), what `quantize=` asks for; `disable=` and `stop_after=` edit all of it."""
    lanes = _vector_lanes(resolved)
    compression = pruning_passes(prune, lanes, calibration) + low_rank_passes(low_rank, lanes)
    return resolve_pipeline(opt_level, passes, disable, stop_after, compression, quantization_passes(quantize, calibration))


def _vector_lanes(resolved) -> int:
    """fp32 lanes of the target's widest vectors: the multiple pruned channel counts keep."""
    return resolved.vector_unit.lanes if resolved.backend == "tvm" and resolved.device == "cpu" else 8


def bisect(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    tolerance: float,
    *,
    target: str | dict[str, Any] = "llvm",
    opt_level: str = DEFAULT_LEVEL,
    passes: Sequence[PassSpec] | None = None,
    disable: Sequence[str] = (),
    quantize: str | Quantize | None = None,
    calibration: Sequence[Any] | None = None,
    prune: Prune | None = None,
    low_rank: LowRank | None = None,
) -> BisectResult:
    """Name the first pass after which the outputs drift more than `tolerance` (relative to the
    output's scale) from eager: over the same pipeline `kiln.compile` with these arguments runs,
    compression and quantization included. If every graph pass is within tolerance, the backend
    is checked last and named as `backend:<name>` when it is the one that breaks the numbers."""
    graph, inputs, reference = capture(model, example_inputs)
    resolved = resolve_target(target)
    pipeline = _pipeline(resolved, opt_level, passes, disable, None, quantize, calibration, prune, low_rank)
    result = bisect_pipeline(graph, pipeline, inputs, reference, tolerance)
    if result.culprit is not None:
        return result
    optimized, _ = PassManager(pipeline).run(graph)
    executable = build(get_backend(resolved.backend), optimized, BuildContext(resolved))
    drift = Drift.between(executable(inputs), reference)
    if drift.exceeds(tolerance):
        return BisectResult(f"backend:{resolved.backend}", len(pipeline), drift, result.runs + 1)
    return BisectResult(None, None, None, result.runs + 1)
