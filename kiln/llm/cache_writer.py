"""The kernel that writes a step's new key/value rows into the KV cache where it lives, in place.

The compiled prefill/decode step reads the cache and returns only the rows of the tokens it
processed (kiln/llm/step.py); this kernel copies those rows into slots start..start+T of the
cache for every layer at once: for a decode step that is a few KiB, not the cache. Keys are kept
transposed ([B,H,D,S]), so attention's q·Kᵀ reads the cache as it lies. It is a Relax
module of one `call_tir_inplace`, so it is built, saved, cross-compiled and loaded like every other
Kiln module (a TVMExecutable), and runs on the cache's device.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.script import tirx as T

from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.pipeline import compile_module
from kiln.backends.tvm.runtime.executable import TVMExecutable


def _write_rows(layer: int, layers: int, batch: int, heads: int, slots: int, dim: int, dtype: str,
                transposed: bool) -> tvm.tirx.PrimFunc:
    """Layer `layer`'s rows of the step's [L,B,H,T,D] output into that layer's cache: [B,H,S,D],
    or for keys [B,H,D,S] (`transposed`), the layout q·Kᵀ reads without a transposed copy."""
    cache_shape = (batch, heads, dim, slots) if transposed else (batch, heads, slots, dim)

    @T.prim_func(s_tir=True)
    def write_rows(cache_handle: T.handle, rows_handle: T.handle, start_handle: T.handle):
        T.func_attr({"tir.noalias": True})
        steps = T.int64()
        cache = T.match_buffer(cache_handle, cache_shape, dtype)
        rows = T.match_buffer(rows_handle, (layers, batch, heads, steps, dim), dtype)
        start = T.match_buffer(start_handle, (), "int64")
        for b, h, t, d in T.grid(batch, heads, steps, dim):
            with T.sblock("write"):
                vb, vh, vt, vd = T.axis.remap("SSSS", [b, h, t, d])
                if transposed:
                    cache[vb, vh, vd, start[()] + vt] = rows[layer, vb, vh, vt, vd]
                else:
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
    """main(keys_0 … keys_{L-1} [B,H,D,S], values_0 … values_{L-1} [B,H,S,D], key rows and value
    rows [L,B,H,T,D], start int64[]) writes each layer's rows into its cache tensors, in place (each
    layer's cache is its own tensor: TVM's kernels take no views at an offset)."""
    tvm_target = tvm.target.Target(target.tvm_target)
    on_gpu = tvm_target.kind.name == "cuda"
    builder = relax.BlockBuilder()
    types = {True: relax.TensorType((batch, heads, dim, slots), dtype), False: relax.TensorType((batch, heads, slots, dim), dtype)}
    keys = [relax.Var(f"keys_{index}", types[True]) for index in range(layers)]
    values = [relax.Var(f"values_{index}", types[False]) for index in range(layers)]
    steps = tvm.tirx.Var("steps", "int64")
    key_rows, value_rows = (relax.Var(name, relax.TensorType((layers, batch, heads, steps, dim), dtype)) for name in ("key_rows", "value_rows"))
    start = relax.Var("start", relax.TensorType((), "int64"))
    with builder.function("main", [*keys, *values, key_rows, value_rows, start]):
        written = []
        for transposed, caches, rows in ((True, keys, key_rows), (False, values, value_rows)):
            for index, cache in enumerate(caches):
                func = _scheduled(_write_rows(index, layers, batch, heads, slots, dim, dtype, transposed), on_gpu)
                kernel = builder.add_func(func, f"write_{'keys' if transposed else 'values'}_{index}")
                written.append(builder.emit(relax.call_tir_inplace(kernel, [cache, rows, start], [0], types[transposed])))
        builder.emit_func_output(relax.Tuple(written))
    return TVMExecutable(target, library=compile_module(builder.get(), tvm_target)[0])
