"""The ONNX Runtime backend: the optimized Kiln graph, exported to ONNX, run by ONNX Runtime (CUDA
provider where a GPU is present, else CPU). An independent cross-check of the TVM backend, and a
way to ship Kiln's graph optimizations to ONNX Runtime users."""

from __future__ import annotations

import ctypes.util
from pathlib import Path
from typing import Any, Sequence

import torch

from kiln.backends.base import BackendSteps, BuildContext
from kiln.backends.targets import ResolvedTarget
from kiln.ir.graph import Graph
from kiln.passes.loop import Step, StepOutcome
from kiln.timing import median_seconds

MODEL_FILE = "model.onnx"


def _session(model_bytes: bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # onnxruntime-gpu lists its CUDA provider even where no GPU driver exists, then logs an error
    # per session: offer it only where the CUDA driver library is present
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider") if ctypes.util.find_library("cuda") else ("CPUExecutionProvider",)
    providers = [p for p in wanted if p in ort.get_available_providers()]
    return ort.InferenceSession(model_bytes, options, providers=providers)


class OnnxRuntimeExecutable:
    def __init__(self, model_bytes: bytes, threads: int | None) -> None:
        self.model_bytes = model_bytes
        self.session = _session(model_bytes, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {name: t.detach().cpu().contiguous().numpy() for name, t in zip(self.input_names, inputs)}
        return [torch.from_numpy(value) for value in self.session.run(None, feeds)]

    def median_seconds(self, inputs: Sequence[torch.Tensor], repeat: int) -> float:
        return median_seconds(lambda: self(inputs), repeat)

    def save(self, folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(self.model_bytes)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def steps(self, context: BuildContext) -> BackendSteps:
        from kiln.ir.onnx.export import to_onnx

        export = Step("export_onnx", self.name, lambda graph: StepOutcome(to_onnx(graph)))
        session = Step("session", self.name, lambda model: StepOutcome(OnnxRuntimeExecutable(model.SerializeToString(),
                                                                                               context.threads)))
        return BackendSteps([export], [], [], [session])

    def identity(self, target: ResolvedTarget, tuning_dir: Path | None) -> dict[str, Any]:
        return {"target": target.name}

    def locate_disagreement(self, executable: OnnxRuntimeExecutable, graph: Graph, inputs: Sequence[torch.Tensor],
                            tolerance: float) -> str:
        return "ONNX Runtime computes the graph as Kiln exported it (kiln/ir/onnx/export.py): the export or ONNX Runtime's kernels differ."

    def load(self, folder: Path, target: ResolvedTarget, threads: int | None,
             mapped: dict[str, Any] | None = None) -> OnnxRuntimeExecutable:
        return OnnxRuntimeExecutable((folder / MODEL_FILE).read_bytes(), threads)
