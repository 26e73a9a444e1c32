"""Kiln's graph passes, the registry they live in, the pipelines and the manager that runs them.

Importing this package registers every built-in pass.
"""

from kiln.passes import cleanup, fold_batch_norm, fold_constants, low_rank, merge_parallel_linear, pruning, quantization, remove_noops  # noqa: F401
from kiln.passes.bisect import BisectResult, bisect
from kiln.passes.manager import PassManager
from kiln.passes.pipelines import PIPELINES, resolve_pipeline
from kiln.passes.registry import PASSES, Pass, PassResult, get_pass, register_pass

__all__ = [
    "PASSES", "PIPELINES", "BisectResult", "Pass", "PassManager", "PassResult", "bisect", "get_pass", "register_pass",
    "resolve_pipeline",
]
