"""Any dimension can be dynamic: one build serves every size of it, also after save/load."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.export import Dim

import kiln
from kiln.models import EncoderConfig, SmallCNN, TransformerEncoder
from tests.conftest import assert_matches, eager


@pytest.fixture(scope="module")
def bert_like():
    torch.manual_seed(0)
    model = TransformerEncoder(EncoderConfig(vocab=1000, hidden=64, heads=4, layers=2, intermediate=128, max_positions=128)).eval()
    tokens = torch.randint(0, 1000, (1, 32))
    compiled = kiln.compile(model, (tokens,), dynamic_shapes={"tokens": {1: Dim("seq", max=128)}})
    return model, compiled


def test_one_bert_like_build_serves_every_sequence_length(bert_like):
    model, compiled = bert_like
    assert compiled.signature.inputs[0].shape == (1, "seq")
    for length in (16, 77, 128):
        tokens = torch.randint(0, 1000, (1, length))
        assert_matches(compiled(tokens), eager(model, tokens))


def test_dynamic_sequence_survives_save_and_load_in_a_new_process(bert_like, tmp_path):
    model, compiled = bert_like
    compiled.save(tmp_path / "bert.kiln")
    tokens = {length: torch.randint(0, 1000, (1, length)) for length in (16, 77, 128)}
    torch.save({"tokens": tokens, "expected": {n: eager(model, t) for n, t in tokens.items()}}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, kiln
        io = torch.load({str(tmp_path / 'io.pt')!r})
        module = kiln.load({str(tmp_path / 'bert.kiln')!r})
        for length, tokens in io["tokens"].items():
            got, want = module(tokens), io["expected"][length]
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), length
        print("all lengths ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all lengths ok" in result.stdout


def test_a_length_over_the_dims_maximum_is_refused(bert_like):
    _, compiled = bert_like
    with pytest.raises(kiln.InputMismatchError, match="seq"):
        compiled(torch.randint(0, 1000, (1, 129)))


def test_cnn_with_dynamic_batch_and_image_size():
    model, x = SmallCNN().eval(), torch.randn(2, 3, 32, 32)
    dims = {0: Dim("batch", max=16), 2: Dim("height", min=8, max=64), 3: Dim("width", min=8, max=64)}
    compiled = kiln.compile(model, (x,), dynamic_shapes={"x": dims})
    assert compiled.signature.inputs[0].shape == ("batch", 3, "height", "width")
    for shape in ((1, 3, 32, 32), (3, 3, 24, 40), (5, 3, 64, 16)):
        image = torch.randn(shape)
        assert_matches(compiled(image), eager(model, image))


def test_hugging_face_bert_with_one_dim_for_ids_and_mask():
    from kiln.models.hf_corpus import CORPUS

    model, (ids,), kwargs = CORPUS["bert"]()
    seq = Dim("seq", max=64)
    compiled = kiln.compile(model, (ids,), example_kwargs=kwargs,
                            dynamic_shapes={"input_ids": {1: seq}, "attention_mask": {1: seq}})
    for length in (3, 20, 64):
        ids = torch.randint(3, 99, (1, length))
        mask = torch.ones_like(ids)
        assert_matches(compiled(ids, attention_mask=mask), eager(model, ids, attention_mask=mask))
    with pytest.raises(kiln.InputMismatchError, match="'seq'"):
        compiled(torch.randint(3, 99, (1, 5)), attention_mask=torch.ones(1, 6, dtype=torch.long))
