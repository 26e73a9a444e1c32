"""ONNX converters for the composite neural-network operators: normalizations, losses, attention,
rotary embeddings, resizing and grid sampling. Each follows ONNX's reference implementation
(onnx/reference/ops) so that results agree with it, not only with one runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator

from kiln.errors import FrontendError
from kiln.ir.onnx.ops.registry import NodeContext, ceil_pads, converts, same_pads, torch_dtype, window_sums


def _refuse(c: NodeContext, what: str) -> FrontendError:
    return FrontendError(f"ONNX {c.node.op_type} node '{c.node.name or c.node.output[0]}': {what} is not supported")


def _stash(c: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Normalizations compute in `stash_type` (float32 by default), whatever the input type."""
    return x.to(torch_dtype(c.attr("stash_type", onnx.TensorProto.FLOAT), c.node))


@converts("LayerNormalization")
def _layer_norm(c: NodeContext):
    x = c.tensor(0)
    axis = c.attr("axis", -1) % x.dim()
    axes = tuple(range(axis, x.dim()))
    stashed = _stash(c, x)
    mean = stashed.mean(axes, keepdim=True)
    inverse_std = torch.rsqrt(((stashed - mean) ** 2).mean(axes, keepdim=True) + c.attr("epsilon", 1e-5))
    y = ((stashed - mean) * inverse_std).to(x.dtype) * c.tensor(1)
    if c.tensor(2) is not None:
        y = y + c.tensor(2)
    return y, mean, inverse_std


@converts("RMSNormalization")
def _rms_norm(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    axes = tuple(range(c.attr("axis", -1) % x.dim(), x.dim()))
    stashed = _stash(c, x)
    normalized = stashed * torch.rsqrt((stashed * stashed).mean(axes, keepdim=True) + c.attr("epsilon", 1e-5))
    return normalized.to(x.dtype) * c.tensor(1)


@converts("GroupNormalization")
def _group_norm(c: NodeContext) -> torch.Tensor:
    x, scale, bias, groups = c.tensor(0), c.tensor(1), c.tensor(2), c.attr("num_groups")
    channels = x.shape[1]
    grouped = _stash(c, x).reshape(x.shape[0], groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    variance = ((grouped - mean) ** 2).mean(-1, keepdim=True)
    normalized = ((grouped - mean) * torch.rsqrt(variance + c.attr("epsilon", 1e-5))).reshape(x.shape).to(x.dtype)
    if scale.shape[0] != channels:  # opset 18: one scale and bias per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    return normalized * scale.reshape(shape) + bias.reshape(shape)


@converts("MeanVarianceNormalization")
def _mean_variance_norm(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    axes = tuple(a % x.dim() for a in c.attr("axes", [0, 2, 3]))
    centered = x - x.mean(axes, keepdim=True)
    return centered / ((centered * centered).mean(axes, keepdim=True).sqrt() + 1e-9)


@converts("LpPool")
def _lp_pool(c: NodeContext) -> torch.Tensor:
    """(Σ|x|^p)^(1/p) over each window."""
    x, kernel, p = c.tensor(0), list(c.attr("kernel_shape")), c.attr("p", 2)
    n = len(kernel)
    strides, dilations = c.attr("strides", [1] * n), c.attr("dilations", [1] * n)
    pads = same_pads(c, list(x.shape[2:]), kernel, strides, dilations)
    if c.attr("ceil_mode", 0):
        pads = ceil_pads(x, kernel, strides, dilations, pads)
    return window_sums(x.abs() ** p, kernel, strides, dilations, pads) ** (1.0 / p)


def _negative_log_likelihood(c: NodeContext, log_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None):
    ignore = c.attr("ignore_index")
    target = target.to(torch.int64)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    picked = -torch.gather(log_probs, 1, safe_target.unsqueeze(1)).squeeze(1)
    weights = torch.ones_like(picked) if weight is None else weight[safe_target]
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    losses = picked * weights
    reduction = c.attr("reduction", "mean")
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / weights.sum()


@converts("NegativeLogLikelihoodLoss")
def _nll_loss(c: NodeContext) -> torch.Tensor:
    return _negative_log_likelihood(c, c.tensor(0), c.tensor(1), c.tensor(2))


@converts("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(c: NodeContext):
    log_probs = torch.log_softmax(c.tensor(0), 1)
    return _negative_log_likelihood(c, log_probs, c.tensor(1), c.tensor(2)), log_probs


def _softmax_in(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with the exponentials and the quotient rounded to x's own dtype,
    as Attention specifies when softmax_precision is not given (torch.softmax computes half types
    wholly in float32 and rounds once); the sum accumulates in float32 either way."""
    exponentials = torch.exp(x - x.amax(-1, keepdim=True))
    return exponentials / exponentials.sum(-1, keepdim=True)


@converts("Attention")
def _attention(c: NodeContext):
    """ONNX Attention (opset 23), as its reference computes it: scale applied as √scale to Q and
    K, softcap before the mask, bottom-right causal mask after a past cache, GQA by repeating KV heads."""
    q, k, v, mask, past_key, past_value, kv_lengths = (c.tensor(i) if i < len(c.node.input) else None for i in range(7))
    rank = q.dim()
    if rank == 3:
        q_heads, kv_heads = c.attr("q_num_heads"), c.attr("kv_num_heads")
        q = q.reshape(q.shape[0], q.shape[1], q_heads, -1).transpose(1, 2)
        k = k.reshape(k.shape[0], k.shape[1], kv_heads, -1).transpose(1, 2)
        v = v.reshape(v.shape[0], v.shape[1], kv_heads, -1).transpose(1, 2)
    scale = c.attr("scale")
    root_scale = torch.tensor(float(np.sqrt(1 / np.sqrt(q.shape[3]) if scale is None else scale)), dtype=q.dtype)
    if past_key is not None:
        k, v = torch.cat([past_key, k], 2), torch.cat([past_value, v], 2)
    present_key, present_value = k, v
    q_length, kv_length = q.shape[2], k.shape[2]
    bias = torch.zeros((q_length, kv_length), dtype=q.dtype)
    zero, neg_inf = torch.zeros((), dtype=q.dtype), torch.tensor(float("-inf"), dtype=q.dtype)
    if mask is not None:
        if mask.shape[-1] < kv_length:
            mask = F.pad(mask, (0, kv_length - mask.shape[-1]), value=False if mask.dtype == torch.bool else float("-inf"))
        bias = bias + (torch.where(mask, zero, neg_inf) if mask.dtype == torch.bool else mask)
    # a query's absolute position: after the past cache, or (external cache) after each batch's valid keys less the queries
    offset = past_key.shape[2] if past_key is not None else 0
    if kv_lengths is not None:
        offset = (kv_lengths.to(torch.int64) - q_length).reshape(-1, 1, 1, 1)
    distance = torch.arange(q_length).unsqueeze(1) + offset - torch.arange(kv_length)  # query position − key index
    left, right = c.attr("left_window_size", -1), c.attr("right_window_size", -1)
    for allowed in ([distance >= 0] if c.attr("is_causal", 0) else []) + ([distance <= left] if left >= 0 else []) + (
            [-distance <= right] if right >= 0 else []):
        bias = bias + torch.where(allowed, zero, neg_inf)
    if kv_lengths is not None:
        bias = bias + torch.where(torch.arange(kv_length) < kv_lengths.to(torch.int64).reshape(-1, 1, 1, 1), zero, neg_inf)
    if q.shape[1] != k.shape[1] and q.shape[1] % k.shape[1] == 0:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    scores = torch.matmul(q * root_scale, (k * root_scale).transpose(-1, -2))
    softcap = c.attr("softcap", 0.0)
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    qk_output = scores
    with_bias = scores + bias
    mode = c.attr("qk_matmul_output_mode", 0)
    if mode == 2:
        qk_output = with_bias
    precision = c.attr("softmax_precision")
    probabilities = _softmax_in(with_bias.to(torch_dtype(precision, c.node)) if precision else with_bias)
    # rows whose every key is masked (tested per element: TVM's max starts from the lowest finite float)
    fully_masked = torch.isneginf(bias).all(-1, keepdim=True)
    probabilities = torch.where(fully_masked, torch.zeros((), dtype=probabilities.dtype), probabilities)
    if mode == 3:
        qk_output = probabilities
    output = torch.matmul(probabilities.to(q.dtype), v)
    if rank == 3:
        output = output.transpose(1, 2).reshape(output.shape[0], output.shape[2], -1)
    return output, present_key, present_value, qk_output.to(q.dtype)


@converts("RotaryEmbedding")
def _rotary_embedding(c: NodeContext) -> torch.Tensor:
    x, cos, sin, positions = c.tensor(0), c.tensor(1), c.tensor(2), c.tensor(3)
    original_shape = x.shape
    x = x.transpose(1, 2) if x.dim() == 4 else x.reshape(x.shape[0], x.shape[1], c.attr("num_heads"), -1)
    rotated_dim = c.attr("rotary_embedding_dim", 0) or x.shape[3]
    rotate, keep = x[..., :rotated_dim], x[..., rotated_dim:]
    if positions is not None:
        cos, sin = cos[positions.to(torch.int64)], sin[positions.to(torch.int64)]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    interleaved = c.attr("interleaved", 0)
    x1, x2 = (rotate[..., 0::2], rotate[..., 1::2]) if interleaved else rotate.chunk(2, -1)
    real, imaginary = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotate = torch.stack([real, imaginary], -1).reshape(rotate.shape) if interleaved else torch.cat([real, imaginary], -1)
    output = torch.cat([rotate, keep], -1)
    return output.reshape(original_shape) if len(original_shape) == 3 else output.transpose(1, 2)


_RESIZE_ATTRIBUTES = ("antialias", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside", "mode", "nearest_mode")


def _resize_matrix(c: NodeContext, size: int, scale: float | None, output: int | None, roi: tuple[float, float] | None,
                   extrapolation: float) -> np.ndarray:
    """The (size × output) matrix that resizes one axis: ONNX's reference Resize applied to the
    identity along that axis (Resize is linear and separable in every mode)."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in c.node.attribute if a.name in _RESIZE_ATTRIBUTES}
    inputs = {"X": np.eye(size, dtype=np.float32) if extrapolation == 0 else np.zeros((1, size), np.float32),
              "roi": np.array(roi if roi else [], np.float32)}
    names = ["X", "roi"]
    if output is None:
        inputs["scales"], names = np.array([scale], np.float32), names + ["scales"]
    else:
        inputs["sizes"], names = np.array([output], np.int64), names + ["", "sizes"]
    node = onnx.helper.make_node("Resize", names, ["Y"], axes=[1], extrapolation_value=extrapolation, **attributes)
    return ReferenceEvaluator(node).run(None, {k: v for k, v in inputs.items() if k in names})[0]


@converts("Resize", "Upsample")
def _resize(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    if c.node.op_type == "Upsample" or c.opset < 11:
        raise _refuse(c, f"{c.node.op_type} before opset 11")
    if c.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise _refuse(c, f"keep_aspect_ratio_policy '{c.attr('keep_aspect_ratio_policy')}'")
    rank = x.dim()
    axes = [a % rank for a in c.attr("axes", list(range(rank)))]
    roi, scales = c.constant(1), c.constant(2)
    sizes = c.constant(3) if len(c.node.input) > 3 else None
    roi = None if roi is None or roi.size == 0 else roi.tolist()
    crop = c.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    extrapolation = float(c.attr("extrapolation_value", 0.0))
    outside: list[tuple[int, np.ndarray]] = []  # per axis, the outputs that fall outside the crop
    for index, axis in enumerate(axes):
        scale = None if scales is None or scales.size == 0 else float(scales[index])
        output = None if sizes is None or sizes.size == 0 else int(sizes[index])
        if not crop and (output == x.shape[axis] or (output is None and scale == 1.0)):
            continue
        axis_roi = (roi[index], roi[index + len(axes)]) if roi else None
        if crop:
            outside.append((axis, _resize_matrix(c, x.shape[axis], scale, output, axis_roi, 1.0)[0] != 0))
        x = _apply_along(x, axis, _resize_matrix(c, x.shape[axis], scale, output, axis_roi, 0.0))
    if outside:
        mask = torch.zeros(x.shape, dtype=torch.bool)
        for axis, flags in outside:
            shape = [1] * rank
            shape[axis] = -1
            mask = mask | torch.from_numpy(flags).reshape(shape)
        x = torch.where(mask, torch.tensor(extrapolation, dtype=x.dtype), x)
    return x


def _apply_along(x: torch.Tensor, axis: int, matrix: np.ndarray) -> torch.Tensor:
    """x resized along `axis` by `matrix`; a one-hot matrix (nearest) becomes a gather."""
    one_hot = np.all((matrix == 0) | (matrix == 1)) and np.all(matrix.sum(0) == 1)
    if one_hot:
        return torch.index_select(x, axis, torch.from_numpy(matrix.argmax(0).astype(np.int64)))
    weights = torch.from_numpy(matrix).to(x.dtype if x.dtype.is_floating_point else torch.float32)
    resized = torch.matmul(x.movedim(axis, -1).to(weights.dtype), weights).movedim(-1, axis)
    return resized if x.dtype.is_floating_point else resized.round().to(x.dtype)


@converts("GridSample")
def _grid_sample(c: NodeContext) -> torch.Tensor:
    mode = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic", "cubic": "bicubic"}[c.attr("mode", "bilinear" if c.opset < 20 else "linear")]
    return F.grid_sample(c.tensor(0), c.tensor(1), mode=mode, padding_mode=c.attr("padding_mode", "zeros"),
                         align_corners=bool(c.attr("align_corners", 0)))


@converts("AffineGrid")
def _affine_grid(c: NodeContext) -> torch.Tensor:
    return F.affine_grid(c.tensor(0), [int(s) for s in c.constant(1)], align_corners=bool(c.attr("align_corners", 0)))


@converts("CenterCropPad")
def _center_crop_pad(c: NodeContext) -> torch.Tensor:
    x, shape = c.tensor(0), [int(s) for s in c.constant(1)]
    axes = [a % x.dim() for a in c.attr("axes", list(range(x.dim())))]
    for axis, size in zip(axes, shape):
        current = x.shape[axis]
        if current > size:  # an odd surplus leaves one more element at the end, as the reference does
            x = x.narrow(axis, (current - size) // 2, size)
        elif current < size:
            before = (size - current) // 2
            pads = [0, 0] * (x.dim() - 1 - axis) + [before, size - current - before]
            x = F.pad(x, pads)
    return x


@converts("SwiGLU")
def _swiglu(c: NodeContext) -> torch.Tensor:
    a, b = c.tensor(0), c.tensor(1)
    return a * torch.sigmoid(c.attr("alpha", 1.0) * a) * b


@converts("CausalConvWithState")
def _causal_conv_with_state(c: NodeContext):
    """Depthwise causal conv1d whose left padding is the previous call's last k−1 inputs (or zeros);
    returns those of this call as the next state."""
    x, weight, bias, past = (c.tensor(i) for i in range(4))
    channels, k = x.shape[1], weight.shape[2]
    padded = torch.cat([past if past is not None else torch.zeros((x.shape[0], channels, k - 1), dtype=x.dtype), x], 2)
    output = F.conv1d(padded, weight, bias, groups=channels)
    if c.attr("activation", "none") in ("silu", "swish"):
        output = F.silu(output.to(torch.float32)).to(x.dtype)
    elif c.attr("activation", "none") != "none":
        raise _refuse(c, f"activation '{c.attr('activation')}'")
    return output, padded[:, :, padded.shape[2] - (k - 1):]


@converts("TensorScatter")
def _tensor_scatter(c: NodeContext) -> torch.Tensor:
    """A KV-cache write: each batch row's update lands at its write index along `axis` (wrapping
    around the cache in circular mode)."""
    cache, update, write_indices = c.tensor(0), c.tensor(1), c.tensor(2)
    axis = c.attr("axis", -2) % cache.dim()
    start = write_indices.to(torch.int64) if write_indices is not None else torch.zeros(cache.shape[0], dtype=torch.int64)
    along = [1] * cache.dim()
    along[axis] = -1
    index = start.reshape(-1, *[1] * (cache.dim() - 1)) + torch.arange(update.shape[axis]).reshape(along)
    if c.attr("mode", "linear") == "circular":
        index = index % cache.shape[axis]
    return cache.scatter(axis, index.expand(update.shape), update)
