"""`kiln.compile`: capture → graph passes → backend, with the whole run in one report."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, Union

import torch
import torch.utils._pytree as pytree

from kiln.backends import BuildContext, get_backend, resolve_target
from kiln.cache import CompileCache, graph_key, versions, warn_unusable
from kiln.errors import FrontendError, KilnError, TargetError, stage
from kiln.fingerprint import model_fingerprint
from kiln.ir.graph import Graph
from kiln.ir.torch_frontend import from_torch, inference_mode
from kiln.module import CompiledModule
from kiln.passes import BisectResult, DebugDir, Drift, PassManager, resolve_pipeline
from kiln.passes.instrument import PassRecord
from kiln.passes.bisect import bisect as bisect_pipeline
from kiln.passes.low_rank import LowRank, low_rank_passes
from kiln.passes.pruning import Prune, pruning_passes
from kiln.passes.quantization import Quantize, quantization_passes
from kiln.passes.pipelines import DEFAULT_LEVEL, PassSpec
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
) -> tuple[Graph, list[torch.Tensor], list[torch.Tensor]]:
    """The model's graph, its flat example inputs, and the eager outputs every drift is measured
    against. An ONNX model (path or ModelProto) becomes a torch module first (kiln/ir/onnx/frontend.py);
    its example inputs default to random tensors of the graph's input shapes."""
    if not isinstance(model, torch.nn.Module):
        from kiln.ir.onnx.frontend import onnx_module

        model, generated = onnx_module(model, input_shapes)
        example_inputs = example_inputs or generated
    with inference_mode(model):
        graph = from_torch(model, example_inputs, example_kwargs, dynamic_batch=dynamic_batch, dynamic_shapes=dynamic_shapes)
    return graph, graph.flatten_inputs(example_inputs, example_kwargs), eager_outputs(model, example_inputs, example_kwargs)


def eager_outputs(model: torch.nn.Module, example_inputs: Sequence[Any], example_kwargs: dict[str, Any] | None) -> list[torch.Tensor]:
    """The model's outputs on the example inputs, run eagerly in inference mode: what drift is
    measured against."""
    with inference_mode(model):
        try:
            with torch.no_grad():
                outputs = model(*example_inputs, **(example_kwargs or {}))
        except Exception as error:
            raise FrontendError(f"{type(model).__name__} failed when run eagerly on the example inputs: "
                                f"{type(error).__name__}: {error}") from error
    return [leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor)]


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
    """
    resolved = resolve_target(target)
    pipeline = resolve_pipeline(opt_level, passes, disable, stop_after)
    # compress first (the batch norms that rank channels are still there), quantize last (calibrate what runs)
    lanes = _vector_lanes(resolved)
    compression = pruning_passes(prune, lanes, calibration) + low_rank_passes(low_rank, lanes)
    pipeline = compression + pipeline + quantization_passes(quantize, calibration)
    progress = _progress(verbose)
    debug = DebugDir(debug_dir)

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise TargetError(f"threads={threads!r}: give a positive number of CPU threads, or None for every core")
    compile_cache = usable_cache(cache, resolved)
    options = {**build_identity(resolved, tuning_dir), "pipeline": pipeline, "threads": threads} if compile_cache else {}
    calibration_tensors = pytree.tree_leaves(list(calibration or []))
    fingerprint = None
    if compile_cache is not None and debug_dir is None and isinstance(model, torch.nn.Module):
        start = time.perf_counter()
        with stage("fingerprinting the model for the compile cache"):
            fingerprint = model_fingerprint(model, example_inputs, example_kwargs, {
                **options, "dynamic_batch": dynamic_batch, "dynamic_shapes": repr(dynamic_shapes), "versions": versions()},
                calibration_tensors)
        if fingerprint is not None:
            found = _by_fingerprint(compile_cache, fingerprint, model, example_inputs, example_kwargs, start)
            if found is not None:
                module, inputs, reference = found
                return _on_board(module, remote, inputs, reference, None)
    with stage("capture"):
        graph, inputs, reference = capture(model, example_inputs, example_kwargs, dynamic_batch, input_shapes, dynamic_shapes)
    key = None
    if compile_cache is not None:
        key = graph_key(graph, options, calibration_tensors)
        if debug_dir is None:
            start = time.perf_counter()
            cached, note = compile_cache.load(key)
            if cached is not None:
                if fingerprint is not None:
                    compile_cache.remember(fingerprint, key)
                return _from_cache(cached, key, time.perf_counter() - start, inputs, reference, remote)
            if note:
                warn_unusable(note)
    with stage("the graph passes"):
        manager = PassManager(pipeline, inputs=inputs, reference=reference, debug=debug, progress=progress)
        graph, report = manager.run(graph)

    context = BuildContext(resolved, report, debug, inputs, reference, progress, threads, _path(tuning_dir))
    with stage(f"the {resolved.backend} backend"):
        executable = get_backend(resolved.backend).build(graph, context)
    signature = Signature.of(graph)
    compiled = CompiledModule(executable, signature, resolved, report, threads, graph)
    # a build this machine cannot run (CUDA without a GPU) would be loaded only to be refused
    if key is not None and (resolved.cross or executable.why_not_here() is None):
        with stage("storing the build in the compile cache"):
            compile_cache.store_in_background(key, compiled)
            if fingerprint is not None:
                compile_cache.remember(fingerprint, key)
    compiled = _on_board(compiled, remote, inputs, reference, progress)
    debug.write_report(report)
    if debug.enabled:
        _write_html_report(compiled, debug.path, inputs, progress)
    return compiled


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


def _on_board(compiled: CompiledModule, remote: str | None, inputs, reference, progress) -> CompiledModule:
    """With `remote`, the module uploaded to the board and its drift measured there (a row)."""
    if remote is None:
        return compiled
    if progress is not None:
        progress(f"upload to the board at {remote}")
    start = time.perf_counter()
    with stage(f"running on the board at {remote}"):
        compiled = compiled.to_remote(remote)
        drift = Drift.between(compiled.executable(inputs), reference)
    report = compiled.report
    report.add(PassRecord(report.next_index(), "remote", "board", time.perf_counter() - start, note=remote, drift=drift))
    return compiled


def build_identity(resolved, tuning_dir: str | Path | None) -> dict[str, Any]:
    """What a cache key holds about where the build runs: the target with its CPU features and
    the tuning records a build for it would apply."""
    return {"target": [resolved.name, resolved.tvm_target, resolved.cpu_features], "tuning": _tuning_fingerprint(resolved, tuning_dir)}


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


def _tuning_fingerprint(resolved, tuning_dir: str | Path | None) -> str | None:
    """SHA-256 of the tuning records a build for `resolved` would apply (None without any)."""
    import hashlib

    import tvm

    from kiln.backends.tvm.tuning.database import RECORDS_FILE, TuningDatabase

    records = TuningDatabase.for_target(_path(tuning_dir), tvm.target.Target(resolved.tvm_target)).path / RECORDS_FILE
    return hashlib.sha256(records.read_bytes()).hexdigest() if records.is_file() else None


def _from_cache(cached: CompiledModule, key: str, seconds: float, inputs, reference, remote: str | None) -> CompiledModule:
    return _on_board(with_cache_row(cached, key, seconds, inputs, reference), remote, inputs, reference, None)


def with_cache_row(cached: CompiledModule, key: str, seconds: float, inputs, reference, how: str = "") -> CompiledModule:
    """The cached module, its report the build's own plus a "cache" row: the drift measured now."""
    drift = Drift.between(cached.executable(inputs), reference) if cached.executable.why_not_here() is None else None
    report = cached.report
    report.add(PassRecord(report.next_index(), "cache", "kiln", seconds, drift=drift, note=f"from cache {key[:16]}{how}"))
    return cached


# how much further from eager than at build time a module found by fingerprint may be
_FINGERPRINT_SLACK, _FINGERPRINT_FLOOR = 10.0, 1e-4


def _by_fingerprint(compile_cache: CompileCache, fingerprint: str, model: torch.nn.Module, example_inputs, example_kwargs,
                    start: float) -> tuple[CompiledModule, list[torch.Tensor], list[torch.Tensor]] | None:
    """The entry the model's fingerprint names, with the flat example inputs and eager outputs it
    was checked on: it must run on them as close to the eager model as it did when it was built.
    None (and the fingerprint forgotten) otherwise."""
    key = compile_cache.key_of(fingerprint)
    if key is None:
        return None
    cached, note = compile_cache.load(key)
    if cached is None:
        if note:
            warn_unusable(note)
        return None
    if cached.executable.why_not_here() is not None:
        return None
    built = next((row.drift for row in reversed(cached.report.rows) if row.drift is not None), None)
    try:
        inputs = cached.signature.flatten(tuple(example_inputs), dict(example_kwargs or {}))
    except KilnError:  # other inputs than the build's: this is not that model
        compile_cache.forget(fingerprint)
        return None
    reference = eager_outputs(model, example_inputs, example_kwargs)
    cached = with_cache_row(cached, key, time.perf_counter() - start, inputs, reference, " (model fingerprint)")
    drift = cached.report.rows[-1].drift
    allowed = max(_FINGERPRINT_SLACK * built.max_rel, _FINGERPRINT_FLOOR) if built is not None else _FINGERPRINT_FLOOR
    if drift is None or drift.exceeds(allowed):
        compile_cache.forget(fingerprint)
        return None
    return cached, inputs, reference


def _vector_lanes(resolved) -> int:
    """fp32 lanes of the target's widest vectors: the multiple pruned channel counts keep."""
    if resolved.backend == "tvm" and resolved.device == "cpu":
        import tvm

        from kiln.backends.tvm.cpu.register_tile import vector_lanes

        return vector_lanes(tvm.target.Target(resolved.cpu_target))
    return 8


def bisect(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    tolerance: float,
    *,
    target: str | dict[str, Any] = "llvm",
    opt_level: str = DEFAULT_LEVEL,
    passes: Sequence[PassSpec] | None = None,
    disable: Sequence[str] = (),
) -> BisectResult:
    """Name the first pass after which the outputs drift more than `tolerance` (relative to the
    output's scale) from eager. If every graph pass is within tolerance, the backend is checked
    last and named as `backend:<name>` when it is the one that breaks the numbers."""
    graph, inputs, reference = capture(model, example_inputs)
    pipeline = resolve_pipeline(opt_level, passes, disable)
    result = bisect_pipeline(graph, pipeline, inputs, reference, tolerance)
    if result.culprit is not None:
        return result
    resolved = resolve_target(target)
    optimized, _ = PassManager(pipeline).run(graph)
    executable = get_backend(resolved.backend).build(optimized, BuildContext(resolved))
    drift = Drift.between(executable(inputs), reference)
    if drift.exceeds(tolerance):
        return BisectResult(f"backend:{resolved.backend}", len(pipeline), drift, result.runs + 1)
    return BisectResult(None, None, None, result.runs + 1)
