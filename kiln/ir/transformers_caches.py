"""`transformers`' cache objects as pytree nodes, so a model that returns its KV cache (every
decoder LM with the default `use_cache=True`) can be captured, and the compiled module returns
the cache as `transformers` would: a `DynamicCache` whose key/value tensors Kiln computed.

`transformers` ships the flatten/unflatten functions for this (`exporters.exporter_dynamo`,
made for its own torch.export path); Kiln registers them instead of writing its own."""

from __future__ import annotations

import sys
from typing import Any


def is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.")


def register_cache_pytrees(model: Any = None) -> bool:
    """Register every `transformers` cache class (and the model's own ones) as a pytree node.
    False where this `transformers` has no such helper (then a cache output stays refused)."""
    if "transformers" not in sys.modules and model is None:
        import transformers  # noqa: F401 - loading a saved module whose outputs hold a cache
    try:
        from transformers.cache_utils import Cache
        from transformers.exporters.exporter_dynamo import _iter_subclasses, register_cache_pytrees_for_model, register_pytree_node
    except ImportError:
        return False
    if model is not None:
        register_cache_pytrees_for_model(model)
    else:
        for cache_type in _iter_subclasses(Cache):
            register_pytree_node(cache_type)
    return True
