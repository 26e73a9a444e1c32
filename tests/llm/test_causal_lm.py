"""kiln.compile_causal_lm: generated tokens equal `transformers`' own generate, token for token."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers as tf

import kiln
from kiln.errors import FrontendError, InputMismatchError

VOCAB = 256
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
FAMILIES = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)),
    "qwen2_gqa": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, num_key_value_heads=2)),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)),
}
MORE_FAMILIES = {
    "mistral_sliding_window": lambda: tf.MistralForCausalLM(tf.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6)),
    "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16)),
    "gemma_mqa": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16)),
    "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**SMALL, num_key_value_heads=2, pad_token_id=0, eos_token_id=2, bos_token_id=1)),
    "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**SMALL)),
    "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                  num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64)),
}
# mixture-of-experts decoders: routing by top-k, tokens sorted by expert, the experts as grouped products
MOE_FAMILIES = {
    "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4,
                                                              num_experts_per_tok=2)),
    "qwen2_moe": lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**SMALL, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                                                                  moe_intermediate_size=32, shared_expert_intermediate_size=64)),
}
MAX_LENGTH = 48
NEW_TOKENS = 20


def _model(make) -> torch.nn.Module:
    torch.manual_seed(0)
    return make().eval()


def _prompt(length: int, seed: int = 1, rows: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def _greedy(model: torch.nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs)


@pytest.fixture(scope="module")
def llama():
    """A Llama-style LM compiled for two rows (one-row calls fill the other with padding)."""
    model = _model(FAMILIES["llama"])
    return model, kiln.compile_causal_lm(model, max_length=MAX_LENGTH, batch_size=2)


def _assert_greedy_matches(model, lm, lengths=(5, 14)) -> None:
    for length in lengths:
        ids = _prompt(length)
        expected = _greedy(model, ids)
        got = lm.generate(ids, max_new_tokens=NEW_TOKENS)
        assert torch.equal(got, expected), f"prompt of {length}: {got[0, length:].tolist()} != {expected[0, length:].tolist()}"


def _assert_greedy_matches_in_a_new_process(model, lm, path, lengths=(5, 14)) -> None:
    """The LM saved, loaded by a fresh Python process, and generating there."""
    lm.save(path)
    prompts = [_prompt(length).tolist() for length in lengths]
    script = textwrap.dedent(f"""
        import json, torch, kiln
        lm = kiln.load({str(path)!r})
        print(json.dumps([lm.generate(torch.tensor(p), max_new_tokens={NEW_TOKENS}).tolist() for p in {prompts}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [_greedy(model, torch.tensor(p)).tolist() for p in prompts]


@pytest.mark.parametrize("family", ["qwen2_gqa", "gpt2"])
def test_greedy_generation_equals_transformers_here_and_after_loading(family, tmp_path):
    model = _model(FAMILIES[family])
    lm = kiln.compile_causal_lm(model, max_length=MAX_LENGTH)
    _assert_greedy_matches(model, lm)
    _assert_greedy_matches_in_a_new_process(model, lm, tmp_path / "lm.kiln")


def test_llama_greedy_generation_equals_transformers_here_and_after_loading(llama, tmp_path):
    _assert_greedy_matches(*llama)
    _assert_greedy_matches_in_a_new_process(*llama, tmp_path / "lm.kiln")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(MORE_FAMILIES))
def test_more_families_generate_as_transformers(family):
    model = _model(MORE_FAMILIES[family])
    _assert_greedy_matches(model, kiln.compile_causal_lm(model, max_length=MAX_LENGTH))


@pytest.mark.parametrize("family", ["mixtral", pytest.param("qwen2_moe", marks=pytest.mark.slow)])
def test_a_mixture_of_experts_lm_generates_as_transformers_with_its_experts_as_grouped_products(family):
    model = _model(MOE_FAMILIES[family])
    _assert_greedy_matches(model, kiln.compile_causal_lm(model, max_length=MAX_LENGTH))
    ids = _prompt(9)
    compiled = kiln.compile(model, (ids,), example_kwargs={"use_cache": False}, cache=False)
    torch.testing.assert_close(compiled(ids, use_cache=False).logits, model(ids, use_cache=False).logits, rtol=1e-4, atol=1e-4)
    grouped = {name: kernel for name, kernel in compiled.executable.kernel_info.items()
               if any(source.startswith("grouped_mm_fallback") for source in kernel["sources"])}
    # one kernel per grouped product (gate/up and down of each layer), no loop over experts
    assert len(grouped) >= 1 and all("grouped_matmul" in name for name in grouped), list(compiled.executable.kernel_info)
    assert all("register_tiled_reduction" in kernel["rule"] for kernel in grouped.values()), grouped


def test_left_padded_batch_generates_each_row_as_transformers(llama):
    model, lm = llama
    ids = torch.cat([_prompt(9, seed=2), torch.cat([torch.zeros(1, 4, dtype=torch.long), _prompt(5, seed=3)], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    expected = _greedy(model, ids, attention_mask=mask, pad_token_id=0)
    assert torch.equal(lm.generate(ids, max_new_tokens=NEW_TOKENS, attention_mask=mask), expected)


def test_stream_yields_the_greedy_tokens_one_step_at_a_time(llama):
    model, lm = llama
    ids = _prompt(7)
    tokens = [token for token in lm.stream(ids, max_new_tokens=NEW_TOKENS)]
    assert all(token.shape == (1,) for token in tokens)
    assert torch.cat(tokens).tolist() == _greedy(model, ids)[0, 7:].tolist()
    timings = lm.timings
    assert timings["prompt_tokens"] == 7 and timings["decoded"] == len(tokens) - 1 and timings["first_token_s"] > 0


def test_sampling_is_reproducible_with_a_seed(llama):
    _, lm = llama
    ids = _prompt(6)
    options = dict(max_new_tokens=NEW_TOKENS, do_sample=True, temperature=0.8, top_k=50, top_p=0.95)
    first = lm.generate(ids, seed=0, **options)
    assert torch.equal(first, lm.generate(ids, seed=0, **options))
    assert not torch.equal(first, lm.generate(ids, seed=1, **options))
    # top_k=1 leaves one candidate: sampling is then greedy decoding
    assert torch.equal(lm.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=True, top_k=1, seed=3),
                       lm.generate(ids, max_new_tokens=NEW_TOKENS))


def test_exported_bundle_generates_with_numpy_and_the_tvm_runtime(llama, tmp_path):
    model, lm = llama
    bundle = lm.export(tmp_path / "bundle")
    ids = _prompt(8)
    result = subprocess.run([sys.executable, str(bundle / "run.py"), "--prompt-ids", ",".join(map(str, ids[0].tolist())),
                             "--max-new-tokens", str(NEW_TOKENS)], capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "TVM_USE_RUNTIME_LIB": "1", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert [int(t) for t in result.stdout.split(",")] == _greedy(model, ids)[0, 8:].tolist()
    assert "tokens/s" in result.stderr


def test_exported_bundle_refuses_a_swapped_library(llama, tmp_path):
    _, lm = llama
    bundle = lm.export(tmp_path / "bundle")
    (bundle / "decode.so").write_bytes((bundle / "write.so").read_bytes())
    result = subprocess.run([sys.executable, str(bundle / "run.py"), "--prompt-ids", "5,6"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "SHA-256" in result.stderr


def test_unsupported_architecture_is_refused_by_name():
    model = tf.BertForMaskedLM(tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(FrontendError, match=r"BertForMaskedLM \(model_type 'bert'\) is not a decoder family .* supported: .*Llama"):
        kiln.compile_causal_lm(model)


def test_inputs_beyond_the_compiled_sizes_are_clear_errors(llama):
    _, lm = llama
    with pytest.raises(InputMismatchError, match=r"prompt of 48 tokens \(padded to a multiple of 16\) and max_new_tokens=20 need 68 cache slots; this LM is compiled with max_length=48"):
        lm.generate(_prompt(33), max_new_tokens=NEW_TOKENS)
    with pytest.raises(InputMismatchError, match="3 prompts, but this LM is compiled for batch 2"):
        lm.generate(_prompt(4, rows=3), max_new_tokens=2)
    with pytest.raises(InputMismatchError, match="outside the vocabulary"):
        lm.generate(torch.tensor([[1, VOCAB]]), max_new_tokens=2)
    with pytest.raises(InputMismatchError, match="sampling needs temperature > 0"):
        lm.generate(_prompt(4), max_new_tokens=2, do_sample=True, temperature=0.0)
    with pytest.raises(InputMismatchError, match="left padding"):
        lm.generate(_prompt(4), max_new_tokens=2, attention_mask=torch.tensor([[1, 1, 0, 1]]))


def test_emulated_rpi4_board_generates_the_host_greedy_tokens(llama, aarch64_board, tmp_path):
    """Cross-compiled for the Raspberry Pi 4, exported, and generated on the emulated aarch64 board
    by the bundle's run.py with the board's TVM runtime (correctness only: the CPU is emulated)."""
    from kiln.backends.tvm.runtime.emulated_board import prepare

    model, _ = llama
    bundle = kiln.compile_causal_lm(model, max_length=24, target="rpi4").export(tmp_path / "bundle")
    ids = _prompt(6)
    board = prepare()
    result = subprocess.run([str(board / "python"), str(bundle / "run.py"), "--prompt-ids", ",".join(map(str, ids[0].tolist())),
                             "--max-new-tokens", "8"], capture_output=True, text=True, timeout=600,
                            env={"PYTHONPATH": str(board / "site-packages"), "TVM_USE_RUNTIME_LIB": "1"})
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=8, do_sample=False)[0, 6:].tolist()
    assert [int(t) for t in result.stdout.split(",")] == expected


def test_cli_generates_from_a_transformers_folder_and_from_the_saved_lm(tmp_path, capsys):
    from kiln.cli import main

    model = _model(FAMILIES["gpt2"])
    model.save_pretrained(tmp_path / "gpt2")
    ids = _prompt(6)
    expected = ",".join(map(str, _greedy(model, ids)[0, 6:12].tolist()))
    prompt = ",".join(map(str, ids[0].tolist()))
    assert main(["generate", str(tmp_path / "gpt2"), "--prompt-ids", prompt, "--max-new-tokens", "6", "-o", str(tmp_path / "lm.kiln")]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == expected and "tokens/s" in out.err
    assert main(["generate", str(tmp_path / "lm.kiln"), "--prompt-ids", prompt, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert main(["generate", str(tmp_path / "lm.kiln"), "--prompt-ids", "1,x"]) == 1
    assert "comma-separated integer token ids" in capsys.readouterr().err


def test_cuda_lm_is_built_here_with_cuda_kernels_and_refused_without_a_gpu():
    """Built on this machine for CUDA (run where a GPU is: benchmarks/gpu.py); without one,
    generation is a clear error, not a crash."""
    import tvm

    from kiln.errors import TargetError

    model = _model(FAMILIES["qwen2_gqa"])
    lm = kiln.compile_causal_lm(model, max_length=24, target="cuda")
    assert all("cuda" in part.module_kinds() for part in lm.parts.values())
    if not tvm.cuda(0).exist:
        with pytest.raises(TargetError, match="no CUDA device"):
            lm.generate(_prompt(4), max_new_tokens=2)
    else:
        assert torch.equal(lm.generate(_prompt(4), max_new_tokens=8).cpu(), model.generate(_prompt(4), max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize("quantize, bytes_ratio, agreement", [("weight_int8", 0.30, 0.9), ("weight_int4", 0.20, 0.6)])
def test_weight_only_lm_reads_fewer_weight_bytes_and_keeps_to_the_fp32_tokens(quantize, bytes_ratio, agreement):
    """Weight-only int8/int4: the decode step's weights shrink to about a quarter / a sixth of fp32
    (linear weights as integers, group scales in float32), and greedy tokens stay mostly those of
    the fp32 model's (a budget, not equality: the weights differ; this tiny random model's logits are
    close to flat, a trained model's are not)."""
    model = _model(FAMILIES["llama"])
    lm = kiln.compile_causal_lm(model, max_length=MAX_LENGTH, quantize=quantize)
    weights = [row.stats.param_bytes for row in lm.report.rows if row.stats is not None]
    assert weights[-1] <= bytes_ratio * weights[0], f"{quantize}: {weights[-1]} of {weights[0]} weight bytes"
    assert any(row.name == "quantize_weight_only" for row in lm.report.rows)
    # the next token after each of 16 prompts (a continuation diverges for good at its first difference)
    prompts = [_prompt(9, seed=seed) for seed in range(16)]
    with torch.no_grad():
        expected = [model(ids).logits[0, -1].argmax().item() for ids in prompts]
    got = [lm.generate(ids, max_new_tokens=1)[0, -1].item() for ids in prompts]
    assert sum(a == b for a, b in zip(got, expected)) / len(prompts) >= agreement, (got, expected)
