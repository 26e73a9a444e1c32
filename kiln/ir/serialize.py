"""Saving a Graph: torch.export's own format for the program, plus Kiln's names for symbols."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch

from kiln.errors import ArtifactError
from kiln.ir.graph import Graph
from kiln.ir.torch_frontend import from_exported_program


def graph_to_bytes(graph: Graph) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(graph.to_exported_program(), buffer)
    return buffer.getvalue()


def graph_from_bytes(data: bytes, symbol_names: dict[str, str], source: str) -> Graph:
    try:
        exported = torch.export.load(io.BytesIO(data))
    except Exception as error:
        raise ArtifactError(f"{source}: the saved graph is corrupt: {error}") from error
    graph = from_exported_program(exported)
    # Re-export named symbolic dims after the user's names; map them back to themselves.
    graph.symbol_names.update({v: v for v in symbol_names.values()})
    graph.symbol_names.update(_rename(graph, symbol_names))
    return graph


def _rename(graph: Graph, symbol_names: dict[str, str]) -> dict[str, str]:
    wanted = list(dict.fromkeys(symbol_names.values()))
    found = [d for spec in graph.inputs for d in spec.shape if isinstance(d, str)]
    return dict(zip(dict.fromkeys(found), wanted))


def save_graph(graph: Graph, path: str | Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("program.pt2", graph_to_bytes(graph))
        archive.writestr("symbols.json", json.dumps(graph.symbol_names))


def load_graph(path: str | Path) -> Graph:
    try:
        with zipfile.ZipFile(path) as archive:
            symbols = json.loads(archive.read("symbols.json"))
            return graph_from_bytes(archive.read("program.pt2"), symbols, str(path))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as error:
        raise ArtifactError(f"{path}: not a readable Kiln graph: {error}") from error
