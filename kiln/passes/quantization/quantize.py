"""Post-training int8 quantization: static (calibrated) for convolutions and linear layers, and
dynamic (activation scales measured at run time) for the linear layers of transformers.

Calibration runs the graph on the user's data and records the range of every quantized layer's
input (min-max, a percentile, or the clipping range with the least quantization error). Each
layer then becomes: quantize the input to uint8 (per-tensor, affine) → integer conv/matmul with
int8 weights (symmetric, per output channel) accumulating in int32 → one float multiply by
input scale × weight scale, plus the bias. The integer ops are Kiln's (kiln/ir/quantized_ops.py);
TVM compiles them to integer kernels, not to float emulation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx

from kiln.passes.batches import split_batch
from kiln.errors import PassError
from kiln.ir.quantized_ops import dequantize_weight  # and registers torch.ops.kiln.*
from kiln.ir.graph import Graph
from kiln.passes.registry import Outcome, register_pass
from kiln.progress import progress
from kiln.passes.rewrite import conv2d_options, is_constant

aten, kiln_ops = torch.ops.aten, torch.ops.kiln
METHODS = ("minmax", "percentile", "mse")
SAMPLE = 1 << 16  # values kept per layer and batch for the percentile and MSE searches


class _Observer(fx.Interpreter):
    """Runs the graph and keeps what the watched nodes produce: a running min/max and a sample."""

    def __init__(self, module: fx.GraphModule, watched: set[fx.Node]) -> None:
        super().__init__(module)
        self.watched = watched
        self.low: dict[fx.Node, float] = {}
        self.high: dict[fx.Node, float] = {}
        self.samples: dict[fx.Node, list[torch.Tensor]] = {}

    def run_node(self, node: fx.Node) -> Any:
        value = super().run_node(node)
        if node in self.watched:
            flat = value.detach().float().reshape(-1)
            self.low[node] = min(self.low.get(node, 0.0), flat.min().item())
            self.high[node] = max(self.high.get(node, 0.0), flat.max().item())
            step = max(flat.numel() // SAMPLE, 1)
            self.samples.setdefault(node, []).append(flat[::step])
        return value


def _range(observer: _Observer, node: fx.Node, method: str, percentile: float) -> tuple[float, float]:
    low, high = observer.low[node], observer.high[node]
    if method == "minmax":
        return low, high
    values = torch.cat(observer.samples[node])
    if method == "percentile":
        q = torch.tensor([1 - percentile / 100, percentile / 100])
        low, high = torch.quantile(values, q).tolist()
        return min(low, 0.0), max(high, 0.0)
    # mse: the clipping of [low, high] whose uint8 rounding loses the least
    best, best_error = (low, high), float("inf")
    for ratio in torch.linspace(0.3, 1.0, 36).tolist():
        scale, zero_point = _affine(low * ratio, high * ratio)
        restored = (torch.clamp(torch.round(values / scale) + zero_point, 0, 255) - zero_point) * scale
        error = torch.mean((restored - values) ** 2).item()
        if error < best_error:
            best, best_error = (low * ratio, high * ratio), error
    return best


def _affine(low: float, high: float) -> tuple[float, int]:
    """uint8 scale and zero point for [low, high] (widened to hold 0 exactly)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    return scale, int(min(max(round(-low / scale), 0), 255))


def _symmetric_integers(weight: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise integers (int8, or int4 packed two per byte) and their float32 scales."""
    out_features, in_features = weight.shape
    limit = 127 if bits == 8 else 7
    grouped = weight.detach().float().reshape(out_features, in_features // group, group)
    scales = grouped.abs().amax(-1).clamp(min=1e-12) / limit
    values = torch.clamp(torch.round(grouped / scales[..., None]), -limit - (bits == 4), limit).reshape(out_features, in_features)
    if bits == 8:
        return values.to(torch.int8), scales
    nibbles = (values + 8).to(torch.uint8).reshape(out_features, in_features // 2, 2)
    return nibbles[..., 0] | (nibbles[..., 1] << 4), scales


def _per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (conv or linear weight) and the channels' scales."""
    values, scales = _symmetric_integers(weight.flatten(1), 8, weight[0].numel())
    return values.reshape(weight.shape), scales[:, 0]


def _quantizable(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in (aten.conv2d.default, aten.linear.default):
        return False
    bias = node.args[2] if len(node.args) > 2 else None
    return is_constant(node.args[1]) and (bias is None or is_constant(bias)) and node.args[0].meta["val"].dtype == torch.float32


def _rewrite(graph: Graph, node: fx.Node, scale: float, zero_point: int) -> None:
    g = graph.module.graph
    x, weight_node = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    weight, weight_scale = _per_channel_int8(graph.constant(weight_node))
    conv = node.target == aten.conv2d.default
    channel_shape = (1, -1, 1, 1) if conv else (-1,)
    multiplier = graph.add_constant((scale * weight_scale).reshape(channel_shape), f"{weight_node.name}_requant", before=node)
    quantized_weight = graph.add_constant(weight, f"{weight_node.name}_int8", before=node)
    with g.inserting_before(node):
        quantized = g.call_function(kiln_ops.quantize.default, (x, scale, zero_point))
        if conv:
            stride, padding, dilation, groups = conv2d_options(node)
            accumulated = g.call_function(kiln_ops.qconv2d.default, (quantized, zero_point, quantized_weight, stride, padding, dilation, groups))
        else:
            accumulated = g.call_function(kiln_ops.qlinear.default, (quantized, zero_point, quantized_weight))
        result = g.call_function(aten.mul.Tensor, (accumulated, multiplier))
        if bias is not None:
            bias_shape = graph.constant(bias).reshape(channel_shape)
            result = g.call_function(aten.add.Tensor, (result, graph.add_constant(bias_shape, f"{bias.name}_bias", before=node)))
    node.replace_all_uses_with(result)
    g.erase_node(node)


def _quantized(graph: Graph, ranges: dict[str, tuple[float, int]], names: Iterable[str]) -> Graph:
    """A copy of `graph` with the named layers quantized (for sensitivity trials)."""
    trial = graph.copy()
    nodes = {n.name: n for n in trial.module.graph.nodes}
    for name in names:
        _rewrite(trial, nodes[name], *ranges[name])
    trial.module.recompile()
    return trial


def _predictor(graph: Graph) -> Callable[..., Any]:
    """The graph as the model was: inputs → its first output, for a user's evaluation function."""

    def predict(*inputs: Any) -> Any:
        with torch.no_grad():
            return graph.module(*graph.flatten_inputs(inputs))[0]

    return predict


def _within_budget(graph, ranges, layers, evaluate, budget) -> tuple[set[str], dict[str, str], str]:
    """Layers to keep in float so that accuracy drops by at most `budget`: each layer's sensitivity
    is the drop with it alone quantized; the most sensitive go back to float one at a time."""
    baseline = evaluate(_predictor(graph))
    sensitivity = {name: baseline - evaluate(_predictor(_quantized(graph, ranges, [name]))) for name in progress(layers, "sensitivity trials")}
    kept: list[str] = []
    drop = baseline - evaluate(_predictor(_quantized(graph, ranges, layers)))
    for name in sorted(layers, key=sensitivity.get, reverse=True):
        if drop <= budget:
            break
        kept.append(name)
        drop = baseline - evaluate(_predictor(_quantized(graph, ranges, [n for n in layers if n not in kept])))
    lines = {name: f"sensitivity {sensitivity[name]:+.4g} → {'kept float' if name in kept else 'int8'}" for name in layers}
    verdict = "within" if drop <= budget else "NOT within (every layer is float and it still drops)" if len(kept) == len(layers) else "over"
    return set(kept), lines, f"accuracy {baseline:.4g} → {baseline - drop:.4g}, drop {drop:.4g} {verdict} the budget {budget:.4g}"


@register_pass("quantize_int8", "Post-training static int8: calibrated uint8 activations, per-channel int8 weights, int32 accumulation", stage="quantize")
def quantize_int8(
    graph: Graph,
    calibration: Sequence[Any] | None = None,
    method: str = "minmax",
    percentile: float = 99.99,
    keep_float: Iterable[str] = (),
    evaluate: Callable[[Callable[..., Any]], float] | None = None,
    max_accuracy_drop: float | None = None,
) -> Outcome:
    if not calibration:
        raise PassError("quantize_int8 needs calibration data: a few batches of real inputs (calibration=[(x,), ...])")
    if method not in METHODS:
        raise PassError(f"quantize_int8: unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    if (evaluate is None) != (max_accuracy_drop is None):
        raise PassError("quantize_int8: max_accuracy_drop needs evaluate (a function of a predictor → accuracy), and the other way round")
    kept = set(keep_float)
    layers = [n for n in graph.module.graph.nodes if _quantizable(n) and n.name not in kept]
    observer = _Observer(graph.module, {layer.args[0] for layer in layers})
    with torch.no_grad():
        for batch in progress(calibration, "calibration batches"):
            observer.run(*graph.flatten_inputs(split_batch(batch)[0]))
    ranges = {layer.name: _affine(*_range(observer, layer.args[0], method, percentile)) for layer in layers}
    lines = {name: f"uint8 scale {scale:.4g}, zero point {zero_point}" for name, (scale, zero_point) in ranges.items()}
    note = ""
    if evaluate is not None:
        sensitive, lines, note = _within_budget(graph, ranges, list(ranges), evaluate, max_accuracy_drop)
        layers = [layer for layer in layers if layer.name not in sensitive]
    for layer in layers:
        _rewrite(graph, layer, *ranges[layer.name])
    floats = len(kept) + len(ranges) - len(layers)
    return Outcome(len(layers), f"{len(layers)} layers int8, {floats} kept float" + (f"; {note}" if note else ""), lines)


@dataclass(frozen=True)
class Quantize:
    """`kiln.compile(..., quantize=Quantize(...))`: what to quantize and how to calibrate.
    `quantize="int8"` means Quantize()."""

    mode: str = "int8"  # or "dynamic_int8" (linear layers; no calibration), "weight_int8", "weight_int4", "fp16", "bf16"
    method: str = "minmax"  # calibration: "minmax", "percentile" or "mse"
    percentile: float = 99.99
    keep_float: tuple[str, ...] = ()  # node names of layers to leave in float (sensitive ones)
    group: int | None = None  # weight-only: inputs per scale (default: the whole row for int8, 32 for int4)
    # static int8: keep the most sensitive layers in float until accuracy (evaluate(predict) → a
    # number, higher is better; predict maps the model's inputs to its first output) drops by at
    # most this much
    max_accuracy_drop: float | None = None
    evaluate: Callable[[Callable[..., Any]], float] | None = None


def _rewrite_dynamic(graph: Graph, node: fx.Node) -> None:
    g = graph.module.graph
    x, weight_node = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    weight, weight_scale = _per_channel_int8(graph.constant(weight_node))
    quantized_weight = graph.add_constant(weight, f"{weight_node.name}_int8", before=node)
    scales = graph.add_constant(weight_scale, f"{weight_node.name}_scale", before=node)
    with g.inserting_before(node):
        measured = g.call_function(kiln_ops.quantize_dynamic.default, (x,))
        values = g.call_function(operator.getitem, (measured, 0))
        scale = g.call_function(operator.getitem, (measured, 1))
        accumulated = g.call_function(kiln_ops.qlinear.default, (values, 0, quantized_weight))
        result = g.call_function(aten.mul.Tensor, (g.call_function(aten.mul.Tensor, (accumulated, scales)), scale))
        if bias is not None:
            result = g.call_function(aten.add.Tensor, (result, bias))
    node.replace_all_uses_with(result)
    g.erase_node(node)


@register_pass("quantize_dynamic_int8", "Dynamic int8 for linear layers: int8 weights, activations quantized at run time by their own range", stage="quantize")
def quantize_dynamic_int8(graph: Graph, keep_float: Iterable[str] = ()) -> int:
    kept = set(keep_float)
    layers = [n for n in graph.module.graph.nodes if _quantizable(n) and n.target == aten.linear.default and n.name not in kept]
    for layer in layers:
        _rewrite_dynamic(graph, layer)
    return len(layers)


def _weight_only_layer(graph: Graph, node: fx.Node, bits: int, group: int | None) -> str:
    """Rewrite one linear layer or embedding table; a line for the report."""
    is_table = node.target == aten.embedding.default
    weight = graph.constant(node.args[0] if is_table else node.args[1])
    size = group or (weight.shape[1] if bits == 8 else 32)
    if weight.shape[1] % size or size % 2:
        return f"kept float: {weight.shape[1]} columns do not split into groups of {size}"
    values, scales = _symmetric_integers(weight, bits, size)
    stored = graph.add_constant(values, f"{node.name}_int{bits}", before=node)
    scale_node = graph.add_constant(scales, f"{node.name}_scales", before=node)
    g = graph.module.graph
    with g.inserting_before(node):
        if is_table:
            replacement = g.call_function(kiln_ops.embedding_weight_only.default, (stored, scale_node, bits, node.args[1]))
        else:
            bias = node.args[2] if len(node.args) > 2 else None
            replacement = g.call_function(kiln_ops.linear_weight_only.default, (node.args[0], stored, scale_node, bits, bias))
    node.replace_all_uses_with(replacement)
    g.erase_node(node)
    error = ((dequantize_weight(values, scales, bits) - weight.float()).norm() / weight.float().norm()).item()
    return f"int{bits}, groups of {size}: {weight.numel() * weight.element_size():,} → {values.numel() + 4 * scales.numel():,} bytes, error {error:.2%}"


def _weight_only_candidate(node: fx.Node) -> bool:
    if _quantizable(node) and node.target == aten.linear.default:
        return True
    # padding_idx, scale_grad_by_freq, sparse: training-only arguments
    return node.target == aten.embedding.default and is_constant(node.args[0]) and node.args[0].meta["val"].dtype == torch.float32


@register_pass("quantize_weight_only", "Weight-only int8/int4: linear weights and embedding tables stored as integers with group-wise scales", stage="quantize")
def quantize_weight_only(graph: Graph, bits: int = 8, group: int | None = None, keep_float: Iterable[str] = ()) -> Outcome:
    if bits not in (4, 8):
        raise PassError(f"quantize_weight_only: bits={bits}; Kiln stores weights as int8 or int4")
    kept = set(keep_float)
    layers = {node.name: _weight_only_layer(graph, node, bits, group)
              for node in [n for n in graph.module.graph.nodes if _weight_only_candidate(n) and n.name not in kept]}
    done = sum(not line.startswith("kept") for line in layers.values())
    return Outcome(done, f"{done} linear layers / embedding tables int{bits} weight-only, {len(layers) - done} kept float", layers)


def quantization_passes(quantize: str | Quantize | None, calibration: Sequence[Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """What `kiln.compile(quantize=...)` appends to the pipeline."""
    if quantize is None:
        return []
    config = Quantize(quantize) if isinstance(quantize, str) else quantize
    if config.mode == "dynamic_int8":
        return [("quantize_dynamic_int8", {"keep_float": config.keep_float}), ("dce", {})]
    if config.mode in ("fp16", "bf16"):
        return [("half_precision", {"dtype": {"fp16": "float16", "bf16": "bfloat16"}[config.mode], "keep_float": config.keep_float}), ("dce", {})]
    if config.mode in ("weight_int8", "weight_int4"):
        options = {"bits": int(config.mode[-1]), "group": config.group, "keep_float": config.keep_float}
        return [("quantize_weight_only", options), ("dce", {})]
    if config.mode != "int8":
        raise PassError(f"quantize='{config.mode}' is not supported; Kiln quantizes 'int8' (static, calibrated), 'dynamic_int8', 'weight_int8', 'weight_int4', 'fp16' and 'bf16'")
    options = {"calibration": calibration, "method": config.method, "percentile": config.percentile, "keep_float": config.keep_float,
               "evaluate": config.evaluate, "max_accuracy_drop": config.max_accuracy_drop}
    return [("quantize_int8", options), ("cse", {}), ("integer_regions", {}), ("dce", {})]
