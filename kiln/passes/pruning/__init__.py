"""Structured pruning (channels with every dependent layer, attention heads) and magnitude
sparsity. Importing it registers the passes."""

from kiln.passes.pruning import channels, heads, magnitude  # noqa: F401
from kiln.passes.pruning.channels import Prune, pruning_passes

__all__ = ["Prune", "pruning_passes"]
