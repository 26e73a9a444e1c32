"""`kiln.load`: any `.kiln` artifact back, in any process: a compiled module, or a compiled LM."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from kiln import artifact
from kiln.llm.causal_lm import KIND as CAUSAL_LM, CompiledCausalLM, restore as restore_causal_lm
from kiln.module import MAPPED_FILES, CompiledModule, restore as restore_module


def load(path: str | Path, trusted_keys: Sequence[Any] | None = None) -> CompiledModule | CompiledCausalLM:
    """Restore a module saved with `CompiledModule.save` (or an LM saved with
    `CompiledCausalLM.save`), in any process.

    Loading maps the artifact's native library into this process, which runs its code: load only
    artifacts you built or whose signer you trust. With `trusted_keys` (Ed25519 public keys, their
    PEM files or hex strings), an artifact not signed by one of them is refused before anything is
    unpacked or loaded."""

    def restore(manifest: dict[str, Any], folder: Path, mapped: dict[str, Any]) -> CompiledModule | CompiledCausalLM:
        if manifest.get("kind") == CAUSAL_LM:
            return restore_causal_lm(manifest, folder)
        return restore_module(manifest, folder, mapped)

    return artifact.read_artifact(path, restore, trusted_keys, map_members=MAPPED_FILES)
