"""ONNX's backend interface (`onnx.backend.base.Backend`) for Kiln, so ONNX's own test suites run
through `kiln.compile` like any user's `.onnx` file would.

    from kiln.ir.onnx_backend import KilnBackend
    outputs = KilnBackend.run_model(model_proto, [numpy arrays])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx.backend.base import Backend, BackendRep


class KilnRep(BackendRep):
    def __init__(self, compiled) -> None:
        self.compiled = compiled

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        outputs = self.compiled(*[torch.from_numpy(np.asarray(a)) for a in arrays])
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return tuple(o.detach().cpu().numpy() for o in outputs)


class KilnBackend(Backend):
    target: str | dict = "llvm"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnRep:
        import kiln

        initializers = {t.name for t in model.graph.initializer}
        shapes = kwargs.pop("input_shapes", None)
        inputs = kwargs.pop("example_inputs", None)
        if inputs is not None:
            names = [i.name for i in model.graph.input if i.name not in initializers]
            shapes = {name: list(np.shape(a)) for name, a in zip(names, inputs)}
        return KilnRep(kiln.compile(model, target=kwargs.pop("target", cls.target), input_shapes=shapes, **kwargs))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[Any], device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, example_inputs=list(inputs), **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
