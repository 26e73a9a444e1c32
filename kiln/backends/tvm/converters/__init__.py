"""Kiln's converters from ATen ops to Relax, one module per op family (TVM's
`relax/transform/legalize_ops/` is the shape): each takes the place of, or adds to, TVM's importer's
own converter for an ATen overload name, where the importer's gets the op wrong, drops an
argument, computes in another dtype, or lacks it. `import_rewrites.py` beside this package
rewrites what is easier said in ATen before import.

    elementwise  activations, shifts
    reduce       sums, means, extrema, products, scans
    linalg       matmul in any rank, linear, addmm
    nn           convolutions, normalizations, softmax, grid sampling
    manipulate   split, cat, squeeze, slice, select, scalar_tensor
    index        advanced indexing, gathers, scatters, top-k
    quantized    Kiln's own int8 and weight-only ops
"""

from __future__ import annotations

from typing import Any, Callable

from kiln.backends.tvm.converters import elementwise, index, linalg, manipulate, nn, quantized, reduce

CONVERTERS: dict[str, Callable[..., Any]] = {
    **elementwise.CONVERTERS, **reduce.CONVERTERS, **linalg.CONVERTERS, **nn.CONVERTERS, **manipulate.CONVERTERS,
    **index.CONVERTERS, **quantized.CONVERTERS,
}
