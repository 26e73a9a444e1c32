"""Kiln IR → TVM Relax, through TVM's ExportedProgram importer.

Operators are checked before import, against the importer's own table, so an unsupported op
fails with Kiln's error naming the op and the model line it came from, not an importer assertion.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Callable

import torch
import torch.fx as fx

from kiln.backends.tvm.import_rewrites import rewrite_dropped_arguments
from kiln.backends.tvm.quantized import QUANTIZED_CONVERTERS
from kiln.errors import BackendError, KilnError, UnsupportedOpError
from kiln.ir.graph import Graph
from kiln.ir.source import model_source



def _hardtanh(node: fx.Node, importer) -> Any:
    """relu6/hardtanh as max-then-min: elementwise ops with scalars, which layout conversion passes
    through (the stock `clip` makes it transpose around every ReLU6 of a channels-last graph)."""
    from tvm import relax

    x = importer.env[node.args[0]]
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    dtype = x.ty.dtype
    clipped = relax.op.minimum(relax.op.maximum(x, relax.const(low, dtype)), relax.const(high, dtype))
    return importer.block_builder.emit(clipped)


def _gelu(node: fx.Node, importer) -> Any:
    """GELU spelled out with erf (or tanh), so the fast-math pass gives it a vectorizable
    polynomial: TVM's own gelu calls the scalar libm erf, 9 ns an element here."""
    import math

    from tvm import relax

    x = importer.env[node.args[0]]
    dtype = x.ty.dtype
    c = lambda value: relax.const(value, dtype)
    if node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "tanh":
        inner = relax.op.multiply(c(math.sqrt(2 / math.pi)), relax.op.add(x, relax.op.multiply(c(0.044715), relax.op.power(x, c(3.0)))))
        gate = relax.op.tanh(inner)
    else:
        gate = relax.op.erf(relax.op.multiply(x, c(1 / math.sqrt(2))))
    return importer.block_builder.emit(relax.op.multiply(relax.op.multiply(x, c(0.5)), relax.op.add(c(1.0), gate)))


def _extremum(x, axes: list[int], keepdims: bool, op_name: str):
    """max/min over `axes` whose identity is ∓inf: TOPI's starts from the lowest (highest) finite
    value, so a reduction over values that are all -inf (fully masked attention rows) returned
    -3.4e38 instead of -inf."""
    from tvm import te, tirx

    rank = len(x.shape)
    axes = sorted(a % rank for a in axes)
    combine = te.max if op_name == "max" else te.min
    identity = float("-inf") if op_name == "max" else float("inf")
    reducer = te.comm_reducer(lambda a, b: combine(a, b), lambda dtype: tirx.const(identity, dtype), name=f"{op_name}_inf")
    reduce_axes = {a: te.reduce_axis((0, x.shape[a]), name=f"k{a}") for a in axes}
    shape = [1 if i in reduce_axes else d for i, d in enumerate(x.shape)] if keepdims else [d for i, d in enumerate(x.shape) if i not in reduce_axes]

    def element(*index):
        kept = iter(index)
        full = [reduce_axes[i] if i in reduce_axes else next(kept) for i in range(rank)] if not keepdims else [
            reduce_axes[i] if i in reduce_axes else index[i] for i in range(rank)]
        return reducer(x(*full), axis=list(reduce_axes.values()))

    return te.compute(shape, element, name=f"{op_name}_inf")


def _reduce(op_name: str):
    """amax/amin, which TVM's importer lacks: over the given dims, with an infinite identity for floats."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x = importer.env[node.args[0]]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        axes = [dims] if isinstance(dims, int) else list(dims) or list(range(len(x.ty.shape)))
        if "float" in str(x.ty.dtype):
            return importer.block_builder.emit_te(_extremum, x, axes, keepdim, op_name)
        return importer.block_builder.emit(getattr(relax.op, op_name)(x, axes, keepdim))

    return convert


def _prod(node: fx.Node, importer) -> Any:
    """prod over one dim (ONNX ReduceProd), which TVM's importer lacks."""
    from tvm import relax

    x = importer.env[node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return importer.block_builder.emit(relax.op.prod(x, [dim % len(x.ty.shape)], keepdim))


def _shift(relax_name: str):
    """bitwise shifts, which TVM's importer lacks, as Relax's (a left shift wraps around in the dtype)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x, shift = (importer.env[a] for a in node.args[:2])
        return importer.block_builder.emit(getattr(relax.op, relax_name)(x, shift))

    return convert


def _topk(node: fx.Node, importer) -> Any:
    """topk through TOPI's kernel: the importer emits Relax's topk, which LegalizeOps leaves
    unlowered on CPU targets."""
    from tvm import topi

    x = importer.env[node.args[0]]
    k = node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", -1)
    largest = node.args[3] if len(node.args) > 3 else node.kwargs.get("largest", True)
    return importer.block_builder.emit_te(topi.topk, x, k, dim % len(x.ty.shape), "both", not largest, "int64")


def _grid_sampler_2d(node: fx.Node, importer) -> Any:
    """grid_sample with the grid moved to the [N, 2, H, W] layout TVM's kernel reads: the stock
    converter passes torch's [N, H, W, 2] grid as it is, and the result comes out transposed."""
    from tvm import relax

    data, grid = importer.env[node.args[0]], importer.env[node.args[1]]
    method = {0: "bilinear", 1: "nearest", 2: "bicubic"}[node.args[2]]
    padding = {0: "zeros", 1: "border", 2: "reflection"}[node.args[3]]
    grid = importer.block_builder.emit(relax.op.permute_dims(grid, [0, 3, 1, 2]))
    return importer.block_builder.emit(
        relax.op.image.grid_sample(data, grid, method=method, layout="NCHW", padding_mode=padding, align_corners=bool(node.args[4]))
    )


def _scatter_reduce(node: fx.Node, importer) -> Any:
    """scatter_reduce (ONNX ScatterElements/ScatterND with a reduction) as Relax's scatter_elements,
    which folds the existing values in, as torch does with include_self=True."""
    from tvm import relax

    if not node.kwargs.get("include_self", node.args[5] if len(node.args) > 5 else True):
        raise UnsupportedOpError("aten.scatter_reduce.two with include_self=False", node.name, model_source(node), "the TVM backend")
    data, dim, index, source, reduce = (node.args[i] for i in range(5))
    if reduce == "mean":  # TVM's running mean gives other numbers than torch's where indices repeat
        raise UnsupportedOpError("aten.scatter_reduce.two with reduce='mean'", node.name, model_source(node), "the TVM backend")
    reduction = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}[reduce]
    env = importer.env
    return importer.block_builder.emit(relax.op.scatter_elements(env[data], env[index], env[source], dim, reduction))


def _scan(topi_name: str):
    """cumsum/cumprod through TOPI's scan kernels: the importer emits Relax's cumsum, which
    LegalizeOps leaves unlowered on CPU targets (the VM then refuses the module)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import topi

        x = importer.env[node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        dtype = node.kwargs.get("dtype")
        return importer.block_builder.emit_te(getattr(topi, topi_name), x, dim % len(x.ty.shape), str(dtype).removeprefix("torch.") if dtype else None)

    return convert


def _product(importer, a, b):
    """a @ b in the inputs' dtype: the importer's converters hard-code float32 outputs, so fp16/bf16
    models came out float32 and float64 ones lost their precision. Half types accumulate in
    float32 and round once, as PyTorch does (fp16 sums drifted by an ulp or two)."""
    from tvm import relax

    dtype = str(a.ty.dtype)
    if dtype in ("float16", "bfloat16"):
        product = importer.block_builder.emit(relax.op.matmul(a, b, out_dtype="float32"))
        return importer.block_builder.emit(relax.op.astype(product, dtype))
    return importer.block_builder.emit(relax.op.matmul(a, b, out_dtype=dtype))


def _matmul(node: fx.Node, importer) -> Any:
    """matmul/mm/bmm in the inputs' dtype (see _product). An N-D matmul is reshaped as torch's
    decomposition reshapes it (to one 2-D product against a matrix, or one 3-D batched product
    when the batch dims agree), so an undecomposed program gets the decomposed one's kernels."""
    from tvm import relax

    bb = importer.block_builder
    a, b = importer.env[node.args[0]], importer.env[node.args[1]]
    a_shape, b_shape = list(a.ty.shape), list(b.ty.shape)
    if len(a_shape) > 2 and len(b_shape) == 2:
        return _rows_product(importer, a, b)
    if len(a_shape) > 3 and len(a_shape) == len(b_shape) and all(
            _same_dim(x, y) for x, y in zip(a_shape[:-2], b_shape[:-2])):
        batch = _product_of(a_shape[:-2])
        a3 = bb.emit(relax.op.reshape(a, [batch] + a_shape[-2:]))
        b3 = bb.emit(relax.op.reshape(b, [batch] + b_shape[-2:]))
        return bb.emit(relax.op.reshape(_product(importer, a3, b3), a_shape[:-1] + [b_shape[-1]]))
    return _product(importer, a, b)


def _rows_product(importer, a, b, bias=None) -> Any:
    """a @ b (b a matrix) with a's leading dims flattened into rows and restored after, the bias
    added to the 2-D product: torch's decomposition of linear and of matmul by a matrix."""
    from tvm import relax

    bb = importer.block_builder
    shape = list(a.ty.shape)
    if len(shape) > 2:
        a = bb.emit(relax.op.reshape(a, [_product_of(shape[:-1]), shape[-1]]))
    product = _product(importer, a, b)
    if bias is not None:
        product = bb.emit(relax.op.add(bias, product))
    if len(shape) > 2:
        product = bb.emit(relax.op.reshape(product, shape[:-1] + [b.ty.shape[-1]]))
    return product


def _product_of(dims: list) -> Any:
    total = dims[0]
    for dim in dims[1:]:
        total = total * dim
    return total


def _same_dim(x: Any, y: Any) -> bool:
    """Two Relax shape dims known equal (the same constant or the same symbolic expression)."""
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(x, y))


def _addmm(node: fx.Node, importer) -> Any:
    """beta·bias + alpha·(a @ b) in the inputs' dtype: the stock addmm added a float32 product to a
    float64 bias, which Relax refuses (linear layers of float64 models)."""
    from tvm import relax

    bias, a, b = (importer.env[x] for x in node.args[:3])
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    dtype = str(a.ty.dtype)
    product = _product(importer, a, b)
    if alpha != 1:
        product = importer.block_builder.emit(relax.op.multiply(product, relax.const(alpha, dtype)))
    if beta != 1:
        bias = importer.block_builder.emit(relax.op.multiply(bias, relax.const(beta, dtype)))
    return importer.block_builder.emit(relax.op.add(bias, product))


def _linear(node: fx.Node, importer) -> Any:
    """linear as its decomposition would give it (x @ wᵀ + b over flattened rows, in the inputs'
    dtype), so an undecomposed program imports to the same Relax and kernels as a decomposed one.
    The stock converter hard-codes a float32 output."""
    from tvm import relax

    x, weight = importer.env[node.args[0]], importer.env[node.args[1]]
    bias = importer.env[node.args[2]] if len(node.args) > 2 and node.args[2] is not None else None
    return _rows_product(importer, x, importer.block_builder.emit(relax.op.permute_dims(weight, [1, 0])), bias)


def _split_with_sizes(node: fx.Node, importer) -> Any:
    """split into pieces of the given sizes as one slice per piece: Relax's split, which the
    importer emits, rejects the repeated cut positions of zero-size pieces (ONNX Split allows them)
    and takes no dynamic sizes (Kiln's LM step splits its attention weights [cache | new tokens])."""
    from tvm import relax

    sizes = node.args[1]
    if all(isinstance(size, int) and size > 0 for size in sizes):
        return _stock_converter(importer, "split_with_sizes.default")(node)
    x = importer.env[node.args[0]]
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(x.ty.shape)
    bounds = [importer.env[size] if isinstance(size, fx.Node) else size for size in sizes]
    ends = [sum(bounds[: i + 1]) for i in range(len(bounds))]
    pieces = [relax.op.strided_slice(x, [dim], [end - size], [end], assume_inbound=True) for size, end in zip(bounds, ends)]
    return importer.block_builder.emit(relax.Tuple([importer.block_builder.emit(p) for p in pieces]))


def _cat(node: fx.Node, importer) -> Any:
    """cat without the empty 1-D tensors torch's legacy rule skips (a `transformers` DynamicCache
    starts each layer's keys as `torch.tensor([])` and concatenates onto it): Relax's concat
    requires one rank."""
    from tvm import relax

    tensors = list(node.args[0])
    ranks = {len(t.meta["val"].shape) for t in tensors if isinstance(t, fx.Node) and "val" in t.meta}
    kept = [t for t in tensors if not (tuple(t.meta["val"].shape) == (0,) and len(ranks) > 1)]
    if len(kept) == len(tensors):
        return _stock_converter(importer, "cat.default")(node)
    if len(kept) == 1:
        return importer.env[kept[0]]
    axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return importer.block_builder.emit(relax.op.concat([importer.env[t] for t in kept], axis=axis))


def _index(node: fx.Node, importer) -> Any:
    """Advanced indexing x[..., i, j, ...] (integer index tensors, None for a full axis) as one take
    over the indexed axes merged into one: the linear index is Σ (i_k mod size_k)·stride_k over
    the broadcast index tensors, so negative indices wrap as in torch. Torch's layout rule follows:
    adjacent indexed axes keep their place, separated ones move to the front. The importer's
    sequential takes assumed in-range indices (Falcon's `qkv[..., [-2], :]` read garbage) and failed
    on broadcast index tensors (`unfold`'s)."""
    from tvm import relax, tirx

    indices = list(node.args[1])
    given = [axis for axis, index in enumerate(indices) if index is not None]
    index_nodes = [indices[axis] for axis in given]
    bb, x = importer.block_builder, importer.env[node.args[0]]
    shape = list(x.ty.shape)
    sizes = [shape[axis] for axis in given]
    if any(index.meta["val"].dtype == torch.bool for index in index_nodes) or not all(
            isinstance(size, tirx.IntImm) for size in sizes):
        return _stock_converter(importer, "index.Tensor")(node)
    sizes = [int(size) for size in sizes]
    adjacent = given == list(range(given[0], given[-1] + 1))
    if not adjacent:  # the indexed axes first, the rest in order
        order = given + [axis for axis in range(len(shape)) if axis not in given]
        x = bb.emit(relax.op.permute_dims(x, order))
        shape = [shape[axis] for axis in order]
        given = list(range(len(given)))
    first, last = given[0], given[-1]
    merged = 1
    for size in sizes:
        merged *= size
    if len(given) > 1:
        x = bb.emit(relax.op.reshape(x, shape[:first] + [merged] + shape[last + 1:]))
    linear, stride = None, merged
    for index_node, size in zip(index_nodes, sizes):
        stride //= size
        index = importer.env[index_node]
        dtype = str(index.ty.dtype)
        index = bb.emit(relax.op.floor_mod(index, relax.const(size, dtype)))
        term = index if stride == 1 else bb.emit(relax.op.multiply(index, relax.const(stride, dtype)))
        linear = term if linear is None else bb.emit(relax.op.add(linear, term))
    return bb.emit(relax.op.take(x, linear, axis=first, mode="clip"))


def _take(data_at: int, index_at: int, axis_of: Callable[[fx.Node], int | None]):
    """embedding, index_select and take as Relax's take in "clip" mode, not the importer's "fast":
    the indices are already guarded (kiln/backends/tvm/index_guard.py), and TVM warns at every
    build that a fast take faults on an index out of range."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        data, index = importer.env[node.args[data_at]], importer.env[node.args[index_at]]
        bb = importer.block_builder
        axis = axis_of(node)
        if axis is None:
            data = bb.emit(relax.op.reshape(data, [-1]))
        return bb.emit(relax.op.take(data, index, axis=0 if axis is None else axis % len(data.ty.shape), mode="clip"))

    return convert


def _scalar_tensor(node: fx.Node, importer) -> Any:
    """scalar_tensor of a size, which may be a dynamic dim (the index guard's bound on a free
    sequence length: kiln/backends/tvm/index_guard.py): the importer makes constants alone."""
    from tvm import relax

    value = importer.env[node.args[0]] if isinstance(node.args[0], fx.Node) else node.args[0]
    dtype = str(node.kwargs.get("dtype") or torch.get_default_dtype()).removeprefix("torch.")
    bb = importer.block_builder
    if isinstance(value, (int, float, bool)):
        return _stock_converter(importer, "scalar_tensor.default")(node)
    if isinstance(getattr(value, "ty", None), relax.TensorType):  # a static dim, as the importer's sym_size gives it
        return bb.emit(relax.op.astype(value, dtype))
    as_tensor = bb.emit(relax.op.shape_to_tensor(relax.ShapeExpr([value])))
    return bb.emit(relax.op.astype(bb.emit(relax.op.reshape(as_tensor, [])), dtype))


def _squeeze(node: fx.Node, importer) -> Any:
    """squeeze of the named dims that have size 1, axes made non-negative: the importer passes
    negative axes through (ConvertLayout then fails with std::bad_alloc: SigLIP's attention-pooling
    head), and when no named dim has size 1 it squeezes every size-1 dim instead of none."""
    from tvm import relax, tirx

    x = importer.env[node.args[0]]
    shape = list(x.ty.shape)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("dims"))
    if dims is None:
        axes = [axis for axis, size in enumerate(shape) if isinstance(size, tirx.IntImm) and int(size) == 1]
    else:
        dims = [dims] if isinstance(dims, int) else list(dims)
        axes = sorted({d % len(shape) for d in dims if isinstance(shape[d % len(shape)], tirx.IntImm) and int(shape[d % len(shape)]) == 1})
    if not axes:
        return x
    return importer.block_builder.emit(relax.op.squeeze(x, axes))


def _slice(node: fx.Node, importer) -> Any:
    """x[..., :n] with n a dynamic size torch proved in bounds (BERT's `position_ids[:, :seq]`
    under a Dim with a maximum): a slice TVM may assume in bounds, so its size is n and not
    min(n, length), which TVM cannot simplify and which left later shapes unknown."""
    from tvm import relax

    dim = node.args[1] if len(node.args) > 1 else 0
    start = node.args[2] if len(node.args) > 2 else None
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    proven = (start in (None, 0) and step == 1 and isinstance(end, fx.Node)
              and str(end.meta.get("val")) == str(node.meta["val"].shape[dim]))
    if not proven:
        return _stock_converter(importer, "slice.Tensor")(node)
    x = importer.env[node.args[0]]
    return importer.block_builder.emit(relax.op.strided_slice(x, [dim], [0], [importer.env[end]], [1], assume_inbound=True))


def _select(node: fx.Node, importer) -> Any:
    """x.select(dim, i) as a one-wide slice: the importer's `take` with a negative index (`h[:, -1]`,
    a decoder's last token) reads before the tensor in TVM's fast take, whatever the dim's size."""
    from tvm import relax

    x = importer.env[node.args[0]]
    dim, index = node.args[1] % len(x.ty.shape), node.args[2]
    start = x.ty.shape[dim] + index if index < 0 else index
    piece = importer.block_builder.emit(relax.op.strided_slice(x, [dim], [start], [start + 1], assume_inbound=True))
    return importer.block_builder.emit(relax.op.squeeze(piece, [dim]))


def _stock_converter(importer, name: str) -> Callable[[fx.Node], Any]:
    """The importer's own converter for `name`, under Kiln's wrappers (its table built once per import)."""
    stock = getattr(importer, "_kiln_stock_converters", None)
    if stock is None:
        stock = importer._kiln_stock_converters = importer.create_convert_map()
    return stock[name]


def _in_input_dtype(name: str):
    """The importer's own converter with the result cast back to the input's dtype: its convolutions
    hard-code float32 outputs (fp16 convolutions came out float32; they keep float32 accumulation)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        result = _stock_converter(importer, name)(node)
        dtype = str(importer.env[node.args[0]].ty.dtype)
        if str(result.ty.dtype) != dtype:
            return importer.block_builder.emit(relax.op.astype(result, dtype))
        return result

    return convert


def _conv(name: str):
    """conv1d/2d/3d: float64 ones computed in float64 (through the importer's float32 they had
    float32's accuracy, found by the fuzzer); other dtypes as `_in_input_dtype`."""
    in_input_dtype = _in_input_dtype(name)

    def convert(node: fx.Node, importer) -> Any:
        if str(importer.env[node.args[0]].ty.dtype) != "float64":
            return in_input_dtype(node, importer)
        args = importer.retrieve_args(node)
        x, weight, bias, stride, padding, dilation, groups = (list(args) + [None, None, None, 1, 0, 1, 1][len(args):])[:7]
        return _convolution_in_dtype(importer, x, weight, bias, stride, padding, dilation, groups)

    return convert


def _convolution_in_dtype(importer, x, weight, bias, stride, padding, dilation, groups) -> Any:
    """A 1/2/3-D convolution (channels first) computed and returned in its input's dtype."""
    from tvm import relax

    rank = len(x.ty.shape) - 2
    op = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}[rank]
    data_layout, kernel_layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[rank]
    result = importer.block_builder.emit(op(
        x, weight, strides=stride, padding=padding, dilation=dilation, groups=groups, data_layout=data_layout,
        kernel_layout=kernel_layout, out_dtype=str(x.ty.dtype)))
    if bias is None:
        return result
    return importer.block_builder.emit(relax.op.add(result, relax.op.reshape(bias, (1, -1) + (1,) * rank)))


def _layer_norm(name: str):
    """layer norm of float64 inputs from its mean and variance: TVM's layer_norm legalizes only
    float32 and float16. Other dtypes take the importer's implementation, given the weight and
    bias where there are (its converter looks a missing one up and fails)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x = importer.env[node.args[0]]
        dtype = str(x.ty.dtype)
        weight, bias = (importer.env.get(node.args[i]) if len(node.args) > i and node.args[i] is not None else None for i in (2, 3))
        eps = node.args[4] if len(node.args) > 4 else 1e-5
        if dtype != "float64":
            return importer._layer_norm_impl(x, weight, bias, eps, node.args[1])
        bb = importer.block_builder
        axes = list(range(-len(node.args[1]), 0))
        centered = bb.emit(relax.op.subtract(x, relax.op.mean(x, axes, keepdims=True)))
        variance = bb.emit(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
        y = bb.emit(relax.op.multiply(centered, relax.op.rsqrt(relax.op.add(variance, relax.const(eps, dtype)))))
        if weight is not None:
            y = bb.emit(relax.op.multiply(y, weight))
        if bias is not None:
            y = bb.emit(relax.op.add(y, bias))
        return y

    return convert


def _group_norm(node: fx.Node, importer) -> Any:
    """group_norm, with ones and zeros where the weight or bias is None (the importer's converter
    looks a missing one up and fails)."""
    import numpy as np
    from tvm import relax

    x = importer.env[node.args[0]]
    groups = node.args[1]
    eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
    channels, dtype = int(x.ty.shape[1]), str(x.ty.dtype)
    given = [node.args[i] if len(node.args) > i else node.kwargs.get(name) for i, name in ((2, "weight"), (3, "bias"))]
    weight, bias = (importer.env[value] if value is not None else relax.const(np.full(channels, fill, dtype=dtype), dtype)
                    for value, fill in zip(given, (1, 0)))
    return importer.block_builder.emit(relax.op.nn.group_norm(
        x, weight, bias, num_groups=groups, channel_axis=1, axes=list(range(2, len(x.ty.shape))), epsilon=eps))


def _in_float32(name: str):
    """The importer's converter run on float32 copies of half-precision inputs, the result rounded
    back once: what PyTorch's CPU kernels do for softmax and sums (TVM's own accumulate in the half
    type: fp16 exponent sums drifted by an ulp)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        stock = _stock_converter(importer, name)
        x = importer.env[node.args[0]]
        dtype = str(x.ty.dtype)
        if dtype not in ("float16", "bfloat16") or node.kwargs.get("dtype") is not None:
            return stock(node)
        importer.env[node.args[0]] = importer.block_builder.emit(relax.op.astype(x, "float32"))
        try:
            result = stock(node)
        finally:
            importer.env[node.args[0]] = x
        return importer.block_builder.emit(relax.op.astype(result, dtype))

    return convert


def _convolution(node: fx.Node, importer) -> Any:
    """convolution, with 3-D transposed convolutions (ONNX ConvTranspose on volumes), which the
    importer refuses, emitted as Relax's conv3d_transpose."""
    from tvm import relax

    args = importer.retrieve_args(node)
    x, weight, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    if not transposed and str(x.ty.dtype) == "float64":
        return _convolution_in_dtype(importer, x, weight, bias, stride, padding, dilation, groups)
    if not (transposed and len(x.ty.shape) == 5):
        return _in_input_dtype("convolution.default")(node, importer)
    result = importer.block_builder.emit(relax.op.nn.conv3d_transpose(
        x, weight, strides=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups,
        data_layout="NCDHW", kernel_layout="IODHW", out_dtype=str(x.ty.dtype)))
    if bias is None:
        return result
    return importer.block_builder.emit(relax.op.add(result, relax.op.reshape(bias, (1, -1, 1, 1, 1))))


# Converters Kiln supplies in place of (or in addition to) the importer's, by ATen overload name.
# Kiln's own ops, added by later passes, register theirs here too.
CUSTOM_CONVERTERS: dict[str, Callable[..., Any]] = {
    "hardtanh.default": _hardtanh,
    "hardtanh_.default": _hardtanh,
    "gelu.default": _gelu,
    "amax.default": _reduce("max"),
    "amin.default": _reduce("min"),
    "prod.dim_int": _prod,
    "bitwise_left_shift.Tensor": _shift("left_shift"),
    "bitwise_right_shift.Tensor": _shift("right_shift"),
    "topk.default": _topk,
    "split_with_sizes.default": _split_with_sizes,
    "grid_sampler_2d.default": _grid_sampler_2d,
    "scatter_reduce.two": _scatter_reduce,
    "cat.default": _cat,
    **{name: _layer_norm(name) for name in ("layer_norm.default", "native_layer_norm.default")},
    "group_norm.default": _group_norm,
    "scalar_tensor.default": _scalar_tensor,
    "slice.Tensor": _slice,
    "select.int": _select,
    **{name: _squeeze for name in ("squeeze.default", "squeeze.dim", "squeeze.dims")},
    "index.Tensor": _index,
    "embedding.default": _take(0, 1, lambda node: 0),
    "index_select.default": _take(0, 2, lambda node: node.args[1]),
    "take.default": _take(0, 1, lambda node: None),
    "cumsum.default": _scan("cumsum"),
    "cumprod.default": _scan("cumprod"),
    **QUANTIZED_CONVERTERS,
    **{name: _matmul for name in ("matmul.default", "mm.default", "bmm.default")},
    "addmm.default": _addmm,
    "linear.default": _linear,
    **{name: _in_float32(name) for name in (
        "softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default", "sum.default", "sum.dim_IntList",
        "mean.default", "mean.dim")},
    **{name: _conv(name) for name in ("conv1d.default", "conv2d.default", "conv3d.default")},
    **{name: _in_input_dtype(name) for name in ("conv_transpose1d.default", "conv_transpose2d.input")},
    "convolution.default": _convolution,
}

def supported_ops() -> set[str]:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    return set(ExportedProgramImporter().create_convert_map()) | set(CUSTOM_CONVERTERS)


def check_supported(program: torch.export.ExportedProgram) -> None:
    """Ops the importer lacks, and one it would get wrong without saying so: max-pool indices (it
    returns zeros for them)."""
    known = supported_ops()
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in known:
            raise UnsupportedOpError(str(node.target), node.name, model_source(node), "the TVM backend")
        if node.op == "call_function" and "max_pool" in node.target.__name__ and "with_indices" in node.target.__name__ \
                and any(user.args[1] == 1 for user in node.users if user.target is operator.getitem):
            raise UnsupportedOpError(f"{node.target} (its indices output)", node.name, model_source(node), "the TVM backend")


# Ops of torch.export's IR, short of core ATen, that import as they are to the Relax their
# decomposition would give (Kiln's converters above, or the importer's with the same arguments);
# batch_norm is not among them: the importer reads it with _native_batch_norm_legit's arguments.
IMPORTED_UNDECOMPOSED = frozenset({
    "linear.default", "conv1d.default", "conv2d.default", "dropout.default", "layer_norm.default", "matmul.default",
    "softmax.int", "transpose.int", "reshape.default", "flatten.using_ints", "max_pool2d.default",
    "adaptive_avg_pool2d.default", "arange.default",
})


def _imports_undecomposed(target: Any) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return target is operator.getitem
    return torch.Tag.core in target.tags or target.namespace == "kiln" or target.__name__ in IMPORTED_UNDECOMPOSED


def _program_for_import(graph: Graph) -> torch.export.ExportedProgram:
    """`graph` as an ExportedProgram in ops the importer reads. Where every op imports as it is,
    the graph is wrapped as it stands; otherwise it is re-exported and decomposed by torch, which
    traces it twice (0.8 and 1.8 s of a 12-layer BERT's cold compile)."""
    if all(_imports_undecomposed(node.target) for node in graph.nodes if node.op == "call_function"):
        return graph.as_exported_program()
    try:
        with warnings.catch_warnings():
            # torch 2.13's own run_decompositions copies a LeafSpec and warns about itself: not the user's to act on
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            return graph.to_exported_program().run_decompositions()
    except Exception as error:
        raise BackendError(f"torch's decompositions (before the TVM import) failed: {type(error).__name__}: {error}",
                           stage="decompose") from error


def to_relax(graph: Graph):
    """The Relax module for `graph`: weights bound as constants, one `main` with flat inputs."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    class Importer(ExportedProgramImporter):
        @staticmethod
        def _convert_pytorch_tensor_to_tvm(tensor: torch.Tensor):
            """Zero-element constants made compact on TVM's side; bfloat16 constants through ml_dtypes:
            the importer's fallback calls torch's numpy(), which has no bfloat16, when DLPack refuses a tensor."""
            import tvm

            if tensor.numel() == 0:
                from kiln.backends.tvm.runtime.executable import empty_tvm_tensor

                return empty_tvm_tensor(tensor, tvm.cpu())
            if tensor.dtype != torch.bfloat16:
                return ExportedProgramImporter._convert_pytorch_tensor_to_tvm(tensor)
            import ml_dtypes

            return tvm.runtime.tensor(tensor.detach().cpu().contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16))

        @staticmethod
        def _flatten_output_args(output_args) -> tuple:
            """No outputs at all is a program too (a model that returns only Python values, or
            None): an empty tuple, where the importer refuses one."""
            return () if output_args in ((), []) else ExportedProgramImporter._flatten_output_args(output_args)

        def create_convert_map(self):
            return _NamingFailures(super().create_convert_map(), self, {node.name for node in graph.nodes})

    program = _program_for_import(graph)
    rewrite_dropped_arguments(program.graph)
    check_supported(program)
    return Importer().from_exported_program(program, False, False, False, CUSTOM_CONVERTERS or None)


class _NamingFailures(dict):
    """The importer's converter table, each converter failing with Kiln's error naming the node,
    its op and the model line it came from, instead of a bare TVM or Python exception; and each
    Relax variable a converter emits named after the Kiln node it came from (torch keeps that in
    `from_node` through the decompositions), which is how the report and the profile say which
    nodes a fused kernel holds."""

    def __init__(self, converters: dict, importer, kiln_nodes: set[str]) -> None:
        super().__init__(converters)
        self.importer, self.kiln_nodes = importer, kiln_nodes

    def __getitem__(self, name: str) -> Callable[..., Any]:
        convert = super().__getitem__(name)

        def named(node: fx.Node, *importer) -> Any:
            builder = self.importer.block_builder
            emit = builder.emit
            source = kiln_node_name(node, self.kiln_nodes)
            builder.emit = lambda expr, name_hint="": emit(expr, name_hint or source)
            try:
                return convert(node, *importer)
            except KilnError:
                raise
            except Exception as error:
                shapes = ", ".join(str(tuple(a.meta["val"].shape)) for a in node.all_input_nodes
                                   if hasattr(a.meta.get("val"), "shape"))
                source = model_source(node)
                where = f"\n  from the model at:\n{source}" if source else ""
                raise BackendError(
                    f"the TVM importer failed on node '{node.name}' ({node.target}, inputs {shapes or 'none'}): "
                    f"{type(error).__name__}: {error}{where}", stage="import", node=node.name, op=str(node.target),
                    source=source) from error
            finally:
                builder.emit = emit

        return named


def kiln_node_name(node: fx.Node, kiln_nodes: set[str]) -> str:
    """The name of the Kiln graph node `node` (of the re-exported, decomposed program) came from:
    the nearest of its `from_node` ancestors that is one (its own name where none is)."""
    if node.name in kiln_nodes:
        return node.name
    sources = node.meta.get("from_node") or []
    source = sources[-1] if sources else None
    while source is not None:
        if source.name in kiln_nodes:
            return source.name
        source = source.from_node[-1] if source.from_node else None
    return node.name
