"""One forward step of a `transformers` decoder LM over Kiln's static KV cache, as a torch module
that torch.export captures: the prefill (a prompt of T tokens) and the decode step (T = 1) are
this module at two input shapes.

Why not `transformers`' own StaticCache: its `update` writes the new keys into the cache in place
(`index_copy_`), which export records as a mutation of an input, and attends over the whole
cache afterwards. Kiln's step instead reads the cache as it was, returns only the T new key/value
rows, and the runtime writes those rows into the cache on the device (`cache_writer.py`): the cache
is never copied, and Kiln's IR stays a pure function of its inputs.

Attention over [cache | new rows] is computed as one softmax over both score blocks (exactly the
attention over the updated cache); grouped-query heads are grouped against their key/value head
instead of repeating the cache per query head. Positions and masks are computed here from `start`
(cache slots already filled) and `pad` (each row's left padding), so the caller passes only ids.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

ATTENTION = "kiln_static_cache"


class _StepCache:
    """What the model's attention layers see as their cache: `update` returns the cache as it was
    and keeps the new rows, which the attention function and the step's outputs read."""

    is_compileable = True

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = keys, values
        self.reads_cache = bool(keys)  # a prefill from slot 0 has nothing cached to read
        self.new_keys: dict[int, torch.Tensor] = {}
        self.new_values: dict[int, torch.Tensor] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        self.new_keys[layer_idx], self.new_values[layer_idx] = key, value
        return (self.keys[layer_idx], self.values[layer_idx]) if self.reads_cache else (key, value)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class _StepState:
    """The step being traced: its cache and the additive masks (full and sliding-window)."""

    current: "_StepState | None" = None

    def __init__(self, cache: _StepCache, masks: dict[int | None, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.cache, self.masks = cache, masks


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
               sliding_window: int | None = None, **kwargs: Any):
    """softmax([q·Kcacheᵀ | q·Knewᵀ]·scale + mask) · [Vcache; Vnew], grouped by key/value head.
    Registered as a `transformers` attention implementation, used only inside Kiln's step."""
    state = _StepState.current
    layer = module.layer_idx
    batch, heads, steps, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim ** -0.5
    grouped = query.view(batch, kv_heads, heads // kv_heads, steps, dim)  # [B,Hkv,G,T,D]
    cached_mask, new_mask = state.masks[sliding_window if sliding_window in state.masks else None]
    # einsum, not matmul with a broadcast head axis: that is lowered as a copy of the whole cache;
    # the cached keys are [B,Hkv,D,S], so q·Kᵀ is a batched matmul over the cache as it lies
    new_key = state.cache.new_keys[layer]
    blocks = [(torch.einsum("bhgtd,bhsd->bhgts", grouped, new_key), new_key.shape[2], state.cache.new_values[layer], new_mask)]
    if state.cache.reads_cache:
        blocks.insert(0, (torch.einsum("bhgtd,bhds->bhgts", grouped, key), key.shape[3], value, cached_mask))
    scores = [product * scale + mask[:, :, None] for product, _, _, mask in blocks]
    weights = torch.softmax(torch.cat(scores, dim=-1).float() if len(scores) > 1 else scores[0].float(), dim=-1).to(query.dtype)
    pieces = torch.split(weights, [length for _, length, _, _ in blocks], dim=-1) if len(blocks) > 1 else [weights]
    output = sum(torch.einsum("bhgts,bhsd->bhgtd", piece, v) for piece, (_, _, v, _) in zip(pieces, blocks))
    return output.reshape(batch, heads, steps, dim).transpose(1, 2), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)  # Kiln passes its own 4D masks


@contextlib.contextmanager
def _attention_implementation(model: torch.nn.Module) -> Iterator[None]:
    """The model's attention layers on Kiln's attention while the step runs, then back as they were."""
    _register_attention()
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    previous = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        for config, implementation in zip(configs, previous):
            config._attn_implementation = implementation


class CausalLMStep(torch.nn.Module):
    """(input_ids [B,T] or [B,T/16,16], start [], pad [B], cache keys per layer [B,Hkv,D,S], values [B,Hkv,S,D]) →
    (logits of the last token [B,V], new keys [L,B,Hkv,T,D], new values [L,B,Hkv,T,D]).
    Without cache tensors it is a prefill from slot 0: attention over the prompt alone."""

    def __init__(self, model: torch.nn.Module, slots: int, sliding_windows: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.slots = slots
        self.sliding_windows = sliding_windows
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, start: torch.Tensor, pad: torch.Tensor, *cache: torch.Tensor):
        if input_ids.dim() == 3:  # a prompt in blocks [B, n, 16]: the prefill's row count is a multiple of 16
            input_ids = input_ids.reshape(input_ids.shape[0], -1)
        batch, steps = input_ids.shape
        query_slot = start + torch.arange(steps)  # [T]: where the new tokens go in the cache
        positions = torch.relu(query_slot[None, :] - pad[:, None])  # [B,T]: a row's first real token is at 0
        masks = {None: self._masks(query_slot, pad, None)}
        for window in self.sliding_windows:
            masks[window] = self._masks(query_slot, pad, window)
        step_cache = _StepCache(list(cache[: self.layers]), list(cache[self.layers:]))
        _StepState.current = _StepState(step_cache, masks)
        try:
            with _attention_implementation(self.model):
                hidden = self.model.base_model(input_ids=input_ids, position_ids=positions, attention_mask=masks[None][1],
                                               cache=step_cache, use_cache=True).last_hidden_state
        finally:
            _StepState.current = None
        new_keys = torch.stack([step_cache.new_keys[i] for i in range(self.layers)])
        new_values = torch.stack([step_cache.new_values[i] for i in range(self.layers)])
        return self.model.get_output_embeddings()(hidden[:, -1]), new_keys, new_values

    def _masks(self, query_slot: torch.Tensor, pad: torch.Tensor, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive masks [B,1,T,S] over the cache's slots and [B,1,T,T] over the new tokens: a key
        is seen when it is not padding, not after the query, and (with a window) within it."""
        lowest = torch.finfo(torch.float32).min
        slot = torch.arange(self.slots)

        def additive(key_slot: torch.Tensor) -> torch.Tensor:
            seen = (key_slot[None, None, :] <= query_slot[None, :, None]) & (key_slot[None, None, :] >= pad[:, None, None])
            if window is not None:
                seen = seen & (query_slot[None, :, None] - key_slot[None, None, :] < window)
            return torch.where(seen, 0.0, lowest)[:, None]

        cached = torch.where((slot < query_slot[0])[None, None, None, :], additive(slot), lowest)  # filled slots only
        return cached, additive(query_slot)
