"""Kiln's graph IR and the frontends that produce it."""

from kiln.ir.graph import Graph, TensorSpec
from kiln.ir.serialize import load_graph, save_graph
from kiln.ir.stats import GraphStats
from kiln.ir.torch_frontend import from_exported_program, from_torch

__all__ = ["Graph", "GraphStats", "TensorSpec", "from_exported_program", "from_torch", "load_graph", "save_graph"]
