"""Low-rank rewrites: a linear layer becomes two thinner ones (truncated SVD of its weight), a
convolution becomes 1×1 → k×k → 1×1 (Tucker-2 of its kernel over the output and input channels,
computed by TensorLy).

The rank of each layer is the smallest that keeps `energy` of the weight's squared singular
values (per mode for Tucker), or, with `ratio`, the largest whose factors hold at most that
fraction of the layer's parameters. Ranks round up to `align` (the target's vector width). A
layer whose factorization would not be cheaper than the layer stays as it is. The report lists
every layer's rank, parameter ratio and relative reconstruction error ‖W − Ŵ‖ / ‖W‖.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from kiln.errors import PassError
from kiln.ir.graph import Graph
from kiln.passes.registry import Outcome, register_pass
from kiln.passes.rewrite import conv2d_options, is_constant

aten = torch.ops.aten


def _rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    cumulative = torch.cumsum(singular.double() ** 2, 0)
    return int(torch.searchsorted(cumulative, energy * cumulative[-1]).item()) + 1


def _aligned(rank: int, align: int, limit: int) -> int:
    return min(limit, -(-rank // align) * align)


def _candidate(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in (aten.linear.default, aten.conv2d.default) or not is_constant(node.args[1]):
        return False
    bias = node.args[2] if len(node.args) > 2 else None
    if bias is not None and not is_constant(bias):
        return False
    return node.target == aten.linear.default or node.target == aten.conv2d.default and conv2d_options(node)[3] == 1


def _svd_factors(weight: torch.Tensor, energy: float, ratio: float | None, align: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A [r, in], B [out, r]) with B·A ≈ weight, or None when not cheaper."""
    out_features, in_features = weight.shape
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    rank = int(ratio * out_features * in_features / (out_features + in_features)) if ratio else _rank_for_energy(s, energy)
    rank = _aligned(max(rank, 1), align, len(s))
    if rank * (in_features + out_features) >= out_features * in_features:
        return None
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(weight.dtype), (u[:, :rank] * root).to(weight.dtype)


def _tucker_ranks(weight: torch.Tensor, energy: float, ratio: float | None, align: int) -> tuple[int, int]:
    out_channels, in_channels, kh, kw = weight.shape
    if ratio:
        budget = ratio * weight.numel()
        for shrink in torch.linspace(1.0, 0.02, 50).tolist():
            ranks = (_aligned(math.ceil(out_channels * shrink), align, out_channels), _aligned(math.ceil(in_channels * shrink), align, in_channels))
            if _tucker_params(weight.shape, ranks) <= budget:
                return ranks
        return ranks
    ranks = []
    for mode in (0, 1):
        unfolded = weight.movedim(mode, 0).reshape(weight.shape[mode], -1)
        ranks.append(_aligned(_rank_for_energy(torch.linalg.svdvals(unfolded.double()), energy), align, weight.shape[mode]))
    return ranks[0], ranks[1]


def _tucker_params(shape, ranks: tuple[int, int]) -> int:
    out_channels, in_channels, kh, kw = shape
    return in_channels * ranks[1] + ranks[0] * ranks[1] * kh * kw + ranks[0] * out_channels


def _call(graph: Graph, before: fx.Node, target, args: tuple) -> fx.Node:
    with graph.module.graph.inserting_before(before):
        return graph.module.graph.call_function(target, args)


def _rewrite_linear(graph: Graph, node: fx.Node, factors: tuple[torch.Tensor, torch.Tensor]) -> None:
    first, second = factors
    name = node.args[1].name
    if node.target == aten.linear.default:
        narrow = _call(graph, node, aten.linear.default, (node.args[0], graph.add_constant(first, f"{name}_v", before=node)))
        node.update_arg(0, narrow)
        node.update_arg(1, graph.add_constant(second, f"{name}_u", before=node))
        return
    stride, padding, dilation, _ = conv2d_options(node)  # a 1×1 convolution
    first_weight = graph.add_constant(first[:, :, None, None], f"{name}_v", before=node)
    narrow = _call(graph, node, aten.conv2d.default, (node.args[0], first_weight, None, stride, padding, dilation, 1))
    node.args = (narrow, graph.add_constant(second[:, :, None, None], f"{name}_u", before=node), node.args[2] if len(node.args) > 2 else None)


def _rewrite_tucker(graph: Graph, node: fx.Node, core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> None:
    stride, padding, dilation, _ = conv2d_options(node)
    name = node.args[1].name
    squeeze = graph.add_constant(in_factor.t()[:, :, None, None].contiguous(), f"{name}_in", before=node)
    narrow = _call(graph, node, aten.conv2d.default, (node.args[0], squeeze, None, [1, 1], [0, 0], [1, 1], 1))
    middle = _call(graph, node, aten.conv2d.default, (narrow, graph.add_constant(core, f"{name}_core", before=node), None, stride, padding, dilation, 1))
    node.args = (middle, graph.add_constant(out_factor[:, :, None, None].contiguous(), f"{name}_out", before=node), node.args[2] if len(node.args) > 2 else None)


def _factorize(graph: Graph, node: fx.Node, energy: float, ratio: float | None, align: int) -> str | None:
    weight = graph.constant(node.args[1]).detach()
    if weight.dim() == 2 or weight.shape[2:] == (1, 1):
        factors = _svd_factors(weight.flatten(1), energy, ratio, align)
        if factors is None:
            return None
        approximation = factors[1].double() @ factors[0].double()
        _rewrite_linear(graph, node, factors)
        rank, params = factors[0].shape[0], factors[0].numel() + factors[1].numel()
    else:
        ranks = _tucker_ranks(weight, energy, ratio, align)
        params = _tucker_params(weight.shape, ranks)
        if params >= weight.numel():
            return None
        import tensorly
        from tensorly.decomposition import partial_tucker

        with tensorly.backend_context("pytorch"):  # a few HOOI sweeps from the SVD start: most of the gain, seconds not minutes
            (core, (out_factor, in_factor)), _ = partial_tucker(weight.float(), rank=list(ranks), modes=[0, 1], init="svd", n_iter_max=3)
        core, out_factor, in_factor = (t.to(weight.dtype).contiguous() for t in (core, out_factor, in_factor))
        approximation = torch.einsum("oikl,Oo,Ii->OIkl", core.double(), out_factor.double(), in_factor.double())
        _rewrite_tucker(graph, node, core, out_factor, in_factor)
        rank = ranks
    error = ((approximation - weight.double().reshape(approximation.shape)).norm() / weight.double().norm().clamp(min=1e-30)).item()
    return f"{tuple(weight.shape)} → rank {rank}: {params / weight.numel():.2f}× params, error {error:.1%}"


@register_pass("low_rank", "Low-rank rewrites: truncated SVD of linear layers, Tucker-2 of convolutions, where cheaper", stage="compress")
def low_rank(graph: Graph, energy: float = 0.9, ratio: float | None = None, align: int = 8, min_params: int = 4096) -> Outcome:
    if not 0.0 < energy <= 1.0 or ratio is not None and not 0.0 < ratio < 1.0:
        raise PassError(f"low_rank: energy {energy} must be in (0, 1] and ratio {ratio} in (0, 1)")
    layers = {}
    for node in [n for n in graph.module.graph.nodes if _candidate(n)]:
        if graph.constant(node.args[1]).numel() >= min_params:
            done = _factorize(graph, node, energy, ratio, align)
            if done is not None:
                layers[node.name] = done
    return Outcome(len(layers), f"{len(layers)} layers factorized", layers)


@dataclass(frozen=True)
class LowRank:
    """`kiln.compile(..., low_rank=LowRank(energy=0.9))`: factorize linear and conv layers, rank by
    retained energy, or by `ratio` (the fraction of each layer's parameters its factors keep)."""

    energy: float = 0.9
    ratio: float | None = None
    align: int | None = None


def low_rank_passes(config: LowRank | None, vector_lanes: int) -> list[tuple[str, dict]]:
    if config is None:
        return []
    return [("low_rank", {"energy": config.energy, "ratio": config.ratio, "align": config.align or vector_lanes}), ("dce", {})]
