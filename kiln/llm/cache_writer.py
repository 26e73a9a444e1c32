"""The kernel that writes a step's new key/value rows into the KV cache where it lives, in place.

The compiled prefill/decode step reads the cache and returns only the rows of the tokens it
processed (kiln/llm/step.py); this kernel copies those rows into slots start..start+T of the
cache for every layer at once: for a decode step that is a few KiB, not the cache. It is a Relax
module of one `call_tir_inplace`, so it is built, saved, cross-compiled and loaded like every other
Kiln module (a TVMExecutable), and runs on the cache's device.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.script import tirx as T

from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.pipeline import lowering_pipeline
from kiln.backends.tvm.runtime.executable import TVMExecutable


def _write_rows(layer: int, layers: int, batch: int, heads: int, slots: int, dim: int, dtype: str) -> tvm.tirx.PrimFunc:
    """Layer `layer`'s rows of the step's [L,B,H,T,D] output into that layer's cache."""
    @T.prim_func(s_tir=True)
    def write_rows(cache_handle: T.handle, rows_handle: T.handle, start_handle: T.handle):
        T.func_attr({"tir.noalias": True})
        steps = T.int64()
        cache = T.match_buffer(cache_handle, (batch, heads, slots, dim), dtype)
        rows = T.match_buffer(rows_handle, (layers, batch, heads, steps, dim), dtype)
        start = T.match_buffer(start_handle, (), "int64")
        for b, h, t, d in T.grid(batch, heads, steps, dim):
            with T.sblock("write"):
                vb, vh, vt, vd = T.axis.remap("SSSS", [b, h, t, d])
                cache[vb, vh, start[()] + vt, vd] = rows[layer, vb, vh, vt, vd]

    return write_rows


def _scheduled(func: tvm.tirx.PrimFunc, on_gpu: bool) -> tvm.tirx.PrimFunc:
    from tvm import s_tir

    schedule = s_tir.Schedule(func)
    block = schedule.get_sblock("write")
    *outer, inner = schedule.get_loops(block)
    rows = schedule.fuse(*outer)
    if on_gpu:
        fused = schedule.fuse(rows, inner)
        blocks, threads = schedule.split(fused, [None, 256])
        schedule.bind(blocks, "blockIdx.x")
        schedule.bind(threads, "threadIdx.x")
    else:
        schedule.parallel(rows)
    return schedule.mod["main"]


def build_cache_writer(target: ResolvedTarget, layers: int, batch: int, heads: int, slots: int, dim: int,
                       dtype: str = "float32") -> TVMExecutable:
    """main(cache_0 … cache_{L-1} [B,H,S,D], rows [L,B,H,T,D], start int64[]) writes each layer's
    rows into its cache tensor, in place (each layer's cache is its own tensor: TVM's kernels take
    no views at an offset)."""
    tvm_target = tvm.target.Target(target.tvm_target)
    builder = relax.BlockBuilder()
    layer_type = relax.TensorType((batch, heads, slots, dim), dtype)
    caches = [relax.Var(f"cache_{index}", layer_type) for index in range(layers)]
    steps = tvm.tirx.Var("steps", "int64")
    rows = relax.Var("rows", relax.TensorType((layers, batch, heads, steps, dim), dtype))
    start = relax.Var("start", relax.TensorType((), "int64"))
    with builder.function("main", [*caches, rows, start]):
        written = []
        for index, cache in enumerate(caches):
            func = _scheduled(_write_rows(index, layers, batch, heads, slots, dim, dtype), tvm_target.kind.name == "cuda")
            kernel = builder.add_func(func, f"write_layer_{index}")
            written.append(builder.emit(relax.call_tir_inplace(kernel, [cache, rows, start], [0], layer_type)))
        builder.emit_func_output(relax.Tuple(written))
    with tvm_target:
        library = tvm.compile(builder.get(), tvm_target, relax_pipeline=lowering_pipeline(tvm_target), tir_pipeline="default")
    return TVMExecutable(target, library=library)
