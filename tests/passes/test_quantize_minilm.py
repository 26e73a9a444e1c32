"""Dynamic int8 on the real MiniLM sentence encoder: embeddings of 120 sentences against fp32,
and nearest-neighbour retrieval."""

from __future__ import annotations

import pytest
import torch

import kiln
from tests import minilm


@pytest.fixture(scope="module")
def encoded():
    return minilm.encoded()


def test_dynamic_int8_minilm_embeddings_and_retrieval_match_fp32(encoded):
    encoder, inputs, reference = encoded
    compiled = kiln.compile(encoder, inputs, quantize="dynamic_int8")
    layers = next(row for row in compiled.report.rows if row.name == "quantize_dynamic_int8").changes
    assert layers >= 6 * 4  # every layer's attention and feed-forward linears (q/k/v may be merged)
    cosine, agreement = minilm.agreement(compiled(*inputs), reference)
    assert len(minilm.SENTENCES) >= 100
    assert cosine >= 0.99, f"mean cosine {cosine:.4f}"
    assert agreement >= 0.95, f"retrieval agrees on {100 * agreement:.1f}% of queries"


def test_weight_only_int8_minilm_matches_fp32_and_int4_is_reported(encoded):
    encoder, inputs, reference = encoded
    linear_bytes = sum(m.weight.numel() * 4 for m in encoder.bert.encoder.modules() if isinstance(m, torch.nn.Linear))
    figures = {}
    for mode, saving in (("weight_int8", 0.74), ("weight_int4", 0.86)):  # their TVM kernels: test_quantize.py
        compiled = kiln.compile(encoder, inputs, quantize=mode, target="eager")
        row = next(row for row in compiled.report.rows if row.name == "quantize_weight_only")
        assert row.changes >= 6 * 4  # every linear of the six layers (q/k/v may be merged)
        kiln_rows = [r for r in compiled.report.rows if r.stage == "kiln"]
        assert kiln_rows[0].stats.param_bytes - kiln_rows[-1].stats.param_bytes >= saving * linear_bytes
        figures[mode] = minilm.agreement(compiled(*inputs), reference)
        print(f"MiniLM {mode}: mean cosine {figures[mode][0]:.4f}, retrieval agreement {figures[mode][1]:.1%}")
    cosine, agreement = figures["weight_int8"]
    assert cosine >= 0.99 and agreement >= 0.95, figures
    assert figures["weight_int4"][0] < cosine  # int4 costs more than int8, and the figures say how much
