"""Every architecture of the Hugging Face corpus compiles for the host CPU as `transformers`
builds it (default flags, `use_cache` included) and matches eager PyTorch; the compiled module
returns what the model returns, cache objects included."""

import pytest
import torch
import torch.utils._pytree as pytree

import kiln
from kiln.models.hf_corpus import CORPUS
from tests.conftest import assert_matches, eager

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", CORPUS)
def test_architecture_compiles_and_matches_eager(name):
    model, args, kwargs = CORPUS[name]()
    compiled = kiln.compile(model, args, example_kwargs=kwargs, target="llvm")
    expected = eager(model, *args, **kwargs)
    got = compiled(*args, **kwargs)
    assert type(got) is type(expected)
    assert_matches(got, expected)


def test_decoder_returns_its_cache_as_transformers_does():
    from transformers.cache_utils import DynamicCache

    model, args, kwargs = CORPUS["llama"]()
    compiled = kiln.compile(model, args, example_kwargs=kwargs)
    out = compiled(*args, **kwargs)
    assert isinstance(out.past_key_values, DynamicCache)
    # the cache Kiln computed continues eager decoding as the eager cache would
    step = torch.tensor([[5]])
    mask = torch.ones(1, args[0].shape[1] + 1, dtype=torch.long)
    reference = eager(model, *args, **kwargs)
    continued = eager(model, step, attention_mask=mask, past_key_values=out.past_key_values)
    wanted = eager(model, step, attention_mask=mask, past_key_values=reference.past_key_values)
    assert_matches(continued.logits, wanted.logits)


def test_cache_output_survives_save_and_load(tmp_path):
    model, args, kwargs = CORPUS["gpt2"]()
    compiled = kiln.compile(model, args, example_kwargs=kwargs)
    compiled.save(tmp_path / "gpt2.kiln")
    loaded = kiln.load(tmp_path / "gpt2.kiln")
    got, want = loaded(*args, **kwargs), compiled(*args, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(pytree.tree_leaves(got), pytree.tree_leaves(want)))


def test_use_cache_false_as_a_keyword_is_a_constant_of_the_capture():
    model, args, kwargs = CORPUS["qwen2"]()
    compiled = kiln.compile(model, args, example_kwargs={**kwargs, "use_cache": False})
    expected = eager(model, *args, **kwargs, use_cache=False)
    assert compiled(*args, **kwargs, use_cache=False).past_key_values is None
    assert_matches(compiled(*args, **kwargs).logits, expected.logits)  # omitted: the compiled value
    with pytest.raises(kiln.InputMismatchError, match="use_cache.*compiled as the constant False"):
        compiled(*args, **kwargs, use_cache=True)
