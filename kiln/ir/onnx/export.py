"""Kiln IR → ONNX, for Netron, for running elsewhere, and for the ONNX Runtime backend.

The graph is re-captured with torch.export and handed to PyTorch's ONNX exporter (the
ExportedProgram path, onnxscript-based), so whatever stage of the pipeline it comes from exports
the same way; quantized graphs export as QDQ (kiln/ir/qdq.py). Input names are the graph's;
outputs are output0, output1, ...
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import torch

from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.ir.qdq import as_qdq

OPSET = 18


class OnnxExportError(KilnError):
    """The graph holds something PyTorch's ONNX exporter cannot express."""


def to_onnx(graph: Graph) -> onnx.ModelProto:
    program = as_qdq(graph).to_exported_program()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms", per export
    try:
        exported = torch.onnx.export(
            program, (), dynamo=True, opset_version=OPSET, optimize=True, verbose=False,
            input_names=[spec.name for spec in graph.inputs], output_names=[spec.name for spec in graph.outputs],
        )
    except Exception as error:
        raise OnnxExportError(f"exporting the graph to ONNX failed: {str(error).splitlines()[0]}") from error
    finally:
        registration.setLevel(level)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        exported.save(str(path))  # weights inline: models here are far below protobuf's 2 GB
        return onnx.load(str(path))


def save_onnx(graph: Graph, path: str | Path) -> Path:
    path = Path(path)
    onnx.save(to_onnx(graph), str(path))
    return path
