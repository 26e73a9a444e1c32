"""Decoder language models compiled for generation: prefill + KV-cache decode (`compile_causal_lm`)."""

from kiln.llm.causal_lm import CompiledCausalLM, compile_causal_lm

__all__ = ["CompiledCausalLM", "compile_causal_lm"]
