"""Which `transformers` decoder LMs Kiln compiles for generation, and the shape of their KV cache.

A family is admitted once Kiln's step (kiln/llm/step.py) is known to reproduce its attention:
rotary or learned positions, grouped-query heads, sliding windows. Any other architecture is
refused by name before anything is traced, rather than compiled into a model that generates
different tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.errors import FrontendError

# model_type (config.model_type) -> the family named in messages
FAMILIES = {
    "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma", "phi3": "Phi-3",
    "gpt2": "GPT-2", "gpt_neox": "GPT-NeoX", "opt": "OPT",
    # mixture-of-experts decoders: Mistral's and Qwen2's attention, the experts as grouped products
    "mixtral": "Mixtral", "qwen2_moe": "Qwen2-MoE",
}


@dataclass(frozen=True)
class CacheLayout:
    """The static KV cache of one compiled LM: per layer, [batch, kv_heads, head_dim, slots] for
    keys (transposed: what q·Kᵀ reads) and [batch, kv_heads, slots, head_dim] for values."""

    layers: int
    batch: int
    kv_heads: int
    slots: int
    head_dim: int
    vocab: int
    prompt_multiple: int = 1  # prompts are left-padded to a multiple of this many tokens
    dtype: str = "float32"

    def shape(self) -> tuple[int, ...]:
        """(layers, batch, kv_heads, slots, head_dim)."""
        return (self.layers, self.batch, self.kv_heads, self.slots, self.head_dim)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_family(model: Any) -> str:
    """The model's config.model_type, once Kiln supports it for generation."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES.values()))
        name = f"{type(model).__name__} (model_type '{model_type}')" if model_type else type(model).__name__
        raise FrontendError(f"kiln.compile_causal_lm: {name} is not a decoder family Kiln generates with; supported: {supported}. "
                            f"kiln.compile(model, ...) still compiles its full-sequence forward")
    if getattr(config, "is_encoder_decoder", False) or not callable(getattr(model, "get_output_embeddings", None)):
        raise FrontendError(f"kiln.compile_causal_lm: {type(model).__name__} is not a causal LM with an output head")
    return model_type


def cache_layout(model: Any, batch: int, slots: int, prompt_multiple: int) -> CacheLayout:
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return CacheLayout(config.num_hidden_layers, batch, kv_heads, slots, head_dim, config.vocab_size, prompt_multiple)


def sliding_windows(model: Any) -> tuple[int, ...]:
    """The window sizes the model's attention layers may be given (Mistral, Qwen2, Phi-3)."""
    window = getattr(model.config, "sliding_window", None)
    return (int(window),) if isinstance(window, int) and window > 0 else ()
