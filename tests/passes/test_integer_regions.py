"""integer_regions: int8 tensors stay uint8 from layer to layer (pooling on uint8, residuals read
the shared quantized tensor), and the compiled integer code equals the IR."""

from __future__ import annotations

import torch
import torch.nn as nn

import kiln
from kiln.ir import from_torch
from kiln.passes import get_pass
from tests.conftest import assert_matches

kiln_ops = torch.ops.kiln


class ResidualStem(nn.Module):
    """ResNet's shape in miniature: stem, max-pool, a residual block, a second max-pool, a head."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.tail = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.block(y) + y) if self.residual else torch.relu(self.block(y))
        return self.tail(y)


def _int8_graph(model: nn.Module, x: torch.Tensor):
    torch.manual_seed(0)
    calibration = [(torch.randn_like(x),) for _ in range(3)]
    graph = get_pass("quantize_int8")(from_torch(model.eval(), (x,)), calibration=calibration).graph
    return get_pass("cse")(graph).graph


def _float_tensors_read_by_a_quantize_and_a_float_op(graph) -> list[str]:
    """The islands' signature: a float tensor written out for a quantize and read as float too."""
    found = []
    for node in graph.nodes:
        users = list(node.users)
        if any(u.target == kiln_ops.quantize.default for u in users) and any(
            u.target != kiln_ops.quantize.default and u.op != "output" for u in users
        ):
            found.append(node.name)
    return found


def test_pooling_moves_onto_uint8_and_gives_the_same_integers():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    before = _int8_graph(ResidualStem(residual=False), x)
    result = get_pass("integer_regions")(before)
    pools = [n for n in result.graph.nodes if n.target == torch.ops.aten.max_pool2d.default]
    assert len(pools) == 2 and all(p.args[0].target == kiln_ops.quantize.default for p in pools)
    assert all(p.meta["val"].dtype == torch.uint8 for p in pools)
    assert result.changes == 2 and "2 max-pools on uint8" in result.note
    # max-pooling commutes with quantizing exactly: not one integer changes
    with torch.no_grad():
        assert torch.equal(result.graph.run(x)[0], before.run(x)[0])


def test_a_residual_reads_the_quantized_tensor_its_block_reads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    before = _int8_graph(ResidualStem(), x)
    assert _float_tensors_read_by_a_quantize_and_a_float_op(before)  # the islands this pass removes
    after = get_pass("integer_regions")(before).graph
    assert _float_tensors_read_by_a_quantize_and_a_float_op(after) == []
    residual = next(n for n in after.nodes if n.target == torch.ops.aten.add.Tensor and any(a.target == kiln_ops.dequantize.default for a in n.args))
    dequantized = next(a for a in residual.args if a.target == kiln_ops.dequantize.default)
    assert dequantized.args[0].target == torch.ops.aten.max_pool2d.default  # the uint8 pool output, shared with the block's conv
    # the identity now carries the rounding of its uint8 grid: at most half a step apart
    with torch.no_grad():
        assert_matches(after.run(x)[0], before.run(x)[0], tolerance=0.05)


def test_compiled_integer_regions_equal_the_ir_and_stay_close_to_fp32():
    torch.manual_seed(0)
    model = ResidualStem().eval()
    x = torch.randn(2, 3, 20, 20)
    compiled = kiln.compile(model, (x,), quantize="int8", calibration=[(torch.randn_like(x),) for _ in range(3)])
    ops = [n.target for n in compiled.graph.nodes]
    # the input, the two pools' inputs, the block's second conv's, the linear layer's (the block's first conv and the tail conv read a pool's uint8)
    assert ops.count(kiln_ops.quantize.default) == 5 and kiln_ops.dequantize.default in ops
    row = next(row for row in compiled.report.rows if row.name == "integer_regions")
    assert row.changes == 3, row.note  # one residual shared, two pools
    with torch.no_grad():
        assert_matches(compiled(x), compiled.graph.run(x)[0], tolerance=1e-5)
        reference = model(x)
    cosine = torch.nn.functional.cosine_similarity(compiled(x).flatten(), reference.flatten(), dim=0).item()
    assert cosine >= 0.999, cosine


def test_a_graph_output_stays_float():
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x):
            y = torch.relu(self.first(x))
            return y, self.second(y)

    x = torch.randn(1, 3, 12, 12)
    before = _int8_graph(Both(), x)
    result = get_pass("integer_regions")(before)
    assert result.changes == 0  # y is returned as float: its quantize is the conv's alone
    with torch.no_grad():
        assert_matches(result.graph.run(x), before.run(x), tolerance=0.0)
