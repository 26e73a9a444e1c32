"""Kiln: a deep-learning model compiler. PyTorch model in, fast compiled module out.

    cm = kiln.compile(model, example_inputs=(x,), target="llvm")
    y = cm(x)
    cm.save("model.kiln"); cm = kiln.load("model.kiln")
    lm = kiln.compile_causal_lm(hf_model, max_length=512); lm.generate(input_ids, max_new_tokens=32)
"""

from kiln.backends.targets import TARGETS
from kiln.compiler import bisect, compile
from kiln.distill import distill
from kiln.llm import CompiledCausalLM, compile_causal_lm
from kiln.errors import (
    ArtifactError,
    BackendError,
    FrontendError,
    InputMismatchError,
    KilnError,
    PassError,
    TargetError,
    UnsupportedOpError,
)
from kiln.loader import load
from kiln.module import CompiledModule
from kiln.passes import PASSES, PIPELINES, register_pass
from kiln.passes.low_rank import LowRank
from kiln.passes.pruning import Prune
from kiln.passes.quantization import Quantize
from kiln.backends.tvm.tuning.tune import tune
from kiln.version import __version__


__all__ = [
    "PASSES", "PIPELINES", "TARGETS", "ArtifactError", "BackendError", "CompiledCausalLM", "CompiledModule", "FrontendError", "InputMismatchError",
    "KilnError", "LowRank", "PassError", "Prune", "Quantize", "TargetError", "UnsupportedOpError", "bisect", "compile", "compile_causal_lm", "distill", "load", "register_pass", "tune", "__version__",
]
