"""Indices are checked (kiln/backends/tvm/index_guard.py): an index out of range is an
IndexOutOfRangeError, as eager raises, never a read outside a buffer; the module keeps working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kiln
from kiln.errors import IndexOutOfRangeError
from tests.conftest import assert_matches

ROOT = Path(__file__).resolve().parents[2]

BERT = """
import sys, torch, kiln, transformers
config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64)
model = transformers.BertModel(config).eval()
ids = torch.randint(0, 100, (1, 8))
compiled = kiln.compile(model, (ids,), cache=False)
for bad in (100, 10**12, -1, -300):
    given = ids.clone()
    given[0, 3] = bad
    try:
        compiled(given)
        print("accepted", bad)
    except kiln.KilnError as error:
        print(type(error).__name__, str(error).splitlines()[0])
with torch.no_grad():
    difference = (compiled(ids).last_hidden_state - model(ids).last_hidden_state).abs().max().item()
print("after", difference)
"""


def test_out_of_range_token_ids_raise_and_the_module_keeps_working():
    """A token id past the vocabulary killed the process (segfault); a smaller one read memory
    outside the embedding table. Run in a process of its own: a regression must not take the
    test session with it."""
    result = subprocess.run([sys.executable, "-c", BERT], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5, result.stdout
    for line, bad in zip(lines, (100, 10**12, -1, -300)):
        assert line.startswith("IndexOutOfRangeError") and f"index {bad} is out of range" in line and "0..99" in line, line
    assert float(lines[-1].split()[1]) < 1e-4
    assert "Fast mode" not in result.stderr  # no take compiles in TVM's faulting mode


class Gathers(torch.nn.Module):
    def forward(self, x, i):
        picked = x[i]  # negative indices count from the end
        gathered = torch.gather(x, 0, i.clamp(min=0).unsqueeze(1).expand(-1, x.shape[1]))
        selected = torch.index_select(x, 0, i.remainder(x.shape[0]))
        return picked + gathered + selected


def test_each_indexing_op_checks_its_index():
    model, x = Gathers(), torch.randn(5, 3)
    compiled = kiln.compile(model, (x, torch.tensor([0, 4, 1, 2])))
    assert len(compiled.executable.index_checks) == 3
    for good in ([0, 4, 1, 2], [-1, 3, 0, -5]):
        i = torch.tensor(good)
        assert_matches(compiled(x, i), model(x, i))
    with pytest.raises(IndexOutOfRangeError, match=r"index 5 is out of range for node 'index' .*-5\.\.4"):
        compiled(x, torch.tensor([0, 5, 1, 2]))
    with pytest.raises(IndexOutOfRangeError, match=r"index -6 is out of range for node 'index'"):
        compiled(x, torch.tensor([0, -6, 1, 2]))
    assert_matches(compiled(x, torch.tensor([1, 1, 1, 1])), model(x, torch.tensor([1, 1, 1, 1])))


class Scatters(torch.nn.Module):
    def forward(self, x, i):
        return torch.zeros(6, 3).scatter(0, i.unsqueeze(1).expand(-1, 3), x)


def test_a_scatter_checks_where_it_writes():
    model, x = Scatters(), torch.randn(4, 3)
    compiled = kiln.compile(model, (x, torch.tensor([0, 5, 2, 3])))
    assert_matches(compiled(x, torch.tensor([1, 0, 5, 4])), model(x, torch.tensor([1, 0, 5, 4])))
    with pytest.raises(IndexOutOfRangeError, match=r"index 6 .*scatter.*0\.\.5"):
        compiled(x, torch.tensor([1, 6, 0, 2]))


class Table(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rows = torch.nn.Embedding(10, 4)
        self.register_buffer("positions", torch.arange(3))
        self.places = torch.nn.Embedding(3, 4)

    def forward(self, ids):
        return self.rows(ids) + self.places(self.positions)


def test_constant_indices_need_no_check_and_a_loaded_module_still_checks(tmp_path):
    model, ids = Table().eval(), torch.tensor([[1, 2, 3]])
    compiled = kiln.compile(model, (ids,))
    assert [check.node for check in compiled.executable.index_checks] == ["embedding"]
    compiled.save(tmp_path / "table.kiln")
    loaded = kiln.load(tmp_path / "table.kiln")
    with pytest.raises(IndexOutOfRangeError, match="index 10 is out of range"):
        loaded(torch.tensor([[1, 10, 3]]))
    assert_matches(loaded(ids), model(ids))
