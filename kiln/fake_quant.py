"""Fake quantization for quantization-aware fine-tuning: the rounding that `quantize="int8"` will
apply, simulated in float during training so the weights learn to live with it.

Every conv/linear layer of a Kiln IR module (an fx graph) gets its weight rounded to symmetric
per-channel int8 and its input to per-tensor uint8 over the range seen so far (a running
min/max), the numbers the int8 pass uses. Gradients pass straight through the rounding. After
training the fake-quant nodes come out again, leaving float weights that `kiln.compile(...,
quantize="int8")` then quantizes for real.
"""

from __future__ import annotations

import torch
import torch.fx as fx

aten = torch.ops.aten
LAYERS = (aten.conv2d.default, aten.linear.default)


def _straight_through(value: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    return value + (rounded - value).detach()


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (weight.dim() - 1)
    scale = weight.detach().abs().flatten(1).amax(1).clamp(min=1e-12).reshape(shape) / 127.0
    return _straight_through(weight, torch.clamp(torch.round(weight / scale), -127, 127) * scale)


class ActivationFakeQuant(torch.nn.Module):
    """uint8 affine rounding over the running range of what passed through (0 always inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.low = torch.minimum(self.low, x.detach().min())
            self.high = torch.maximum(self.high, x.detach().max())
        scale = ((self.high - self.low) / 255.0).clamp(min=1e-8)
        zero_point = torch.clamp(torch.round(-self.low / scale), 0, 255)
        rounded = (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale
        return _straight_through(x, rounded)


def insert(module: fx.GraphModule) -> fx.GraphModule:
    """`module` with fake quantization before every conv/linear layer (edited in place)."""
    graph = module.graph
    for index, layer in enumerate([n for n in graph.nodes if n.op == "call_function" and n.target in LAYERS]):
        name = f"kiln_fake_quant_{index}"
        module.add_submodule(name, ActivationFakeQuant())
        with graph.inserting_before(layer):
            layer.update_arg(0, graph.call_module(name, (layer.args[0],)))
            layer.update_arg(1, graph.call_function(fake_quant_weight, (layer.args[1],)))
    module.recompile()
    return module


def remove(module: fx.GraphModule) -> fx.GraphModule:
    """`module` without the nodes `insert` added (edited in place)."""
    graph = module.graph
    for node in list(graph.nodes):
        if node.target is fake_quant_weight or node.op == "call_module" and str(node.target).startswith("kiln_fake_quant_"):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    module.delete_all_unused_submodules()
    module.recompile()
    return module
