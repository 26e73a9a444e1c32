"""Dynamic int8 on the real MiniLM sentence encoder: embeddings of 120 sentences against fp32,
and nearest-neighbour retrieval."""

from __future__ import annotations

import pytest

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
