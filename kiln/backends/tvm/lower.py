"""Kiln IR → TVM Relax, through TVM's ExportedProgram importer and Kiln's converters
(`converters/`, one module per op family).

The graph is handed over as it stands where every op imports as it is, else decomposed by torch
first; the arguments the importer would drop are rewritten (`import_rewrites.py`); operators are
checked against the converter tables, so an unsupported op fails with Kiln's error naming the op
and the model line it came from, not an importer assertion; and a converter that fails names the
node it failed on.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Callable

import torch
import torch.fx as fx

from kiln.backends.tvm.converters import CONVERTERS
from kiln.backends.tvm.decompositions import DECOMPOSITIONS
from kiln.backends.tvm.import_rewrites import rewrite_dropped_arguments
from kiln.errors import BackendError, KilnError, UnsupportedOpError
from kiln.ir.graph import Graph
from kiln.ir.source import model_source


def supported_ops() -> set[str]:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    return set(ExportedProgramImporter().create_convert_map()) | set(CONVERTERS)


def check_supported(program: torch.export.ExportedProgram) -> None:
    """Ops the importer lacks, and one it would get wrong without saying so: max-pool indices (it
    returns zeros for them)."""
    known = supported_ops()
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in known:
            raise UnsupportedOpError(str(node.target), node.name, model_source(node), "the TVM backend")
        if node.op == "call_function" and "max_pool" in node.target.__name__ and "with_indices" in node.target.__name__ \
                and any(user.args[1] == 1 for user in node.users if user.target is operator.getitem):
            raise UnsupportedOpError(f"{node.target} (its indices output)", node.name, model_source(node), "the TVM backend")


# Ops of torch.export's IR, short of core ATen, that import as they are to the Relax their
# decomposition would give (Kiln's converters above, or the importer's with the same arguments);
# batch_norm is not among them: the importer reads it with _native_batch_norm_legit's arguments.
IMPORTED_UNDECOMPOSED = frozenset({
    "linear.default", "conv1d.default", "conv2d.default", "dropout.default", "layer_norm.default", "matmul.default",
    "softmax.int", "transpose.int", "reshape.default", "flatten.using_ints", "max_pool2d.default",
    "adaptive_avg_pool2d.default", "arange.default",
})


def _imports_undecomposed(target: Any) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return target is operator.getitem
    return torch.Tag.core in target.tags or target.namespace == "kiln" or target.__name__ in IMPORTED_UNDECOMPOSED


def _program_for_import(graph: Graph) -> torch.export.ExportedProgram:
    """`graph` as an ExportedProgram in ops the importer reads. Where every op imports as it is,
    the graph is wrapped as it stands; otherwise it is re-exported and decomposed by torch, which
    traces it twice (0.8 and 1.8 s of a 12-layer BERT's cold compile)."""
    if all(_imports_undecomposed(node.target) for node in graph.nodes if node.op == "call_function"):
        return graph.as_exported_program()
    try:
        with warnings.catch_warnings():
            # torch 2.13's own run_decompositions copies a LeafSpec and warns about itself: not the user's to act on
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            return graph.to_exported_program().run_decompositions()
    except Exception as error:
        raise BackendError(f"torch's decompositions (before the TVM import) failed: {type(error).__name__}: {error}",
                           stage="decompose") from error


def _decompose_unconverted(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Kiln's decompositions (kiln/backends/tvm/decompositions.py) wherever their ops appear;
    then ops no converter reads, decomposed by torch's own decomposition of each (torch._decomp's
    table, beyond the core ATen set `run_decompositions` applies), one op at a time, where the
    decomposition leaves only ops a converter reads: the long tail of ATen compiles through the
    decompositions PyTorch maintains for it. A decomposition into ops Kiln cannot read either
    (torch's primitives) is not taken; what stays is refused by name (check_supported)."""
    from torch._decomp import decomposition_table

    known = supported_ops()

    def unconverted(candidate: torch.export.ExportedProgram) -> set:
        return {node.target for node in candidate.graph.nodes if node.op == "call_function"
                and isinstance(node.target, torch._ops.OpOverload)
                and (node.target.__name__ not in known or node.target in DECOMPOSITIONS)}

    def decomposed(candidate: torch.export.ExportedProgram, table: dict) -> torch.export.ExportedProgram | None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
                return candidate.run_decompositions(table)
        except KilnError:
            raise  # a decomposition that refuses its arguments, by name
        except Exception:  # noqa: BLE001 - a decomposition torch cannot trace here: the op is refused by name
            return None

    ours = {op: DECOMPOSITIONS[op] for op in unconverted(program) if op in DECOMPOSITIONS}
    if ours:  # Kiln's, all at once: each is written in ops that import
        program = decomposed(program, ours) or program
    tried: set = set()
    while True:
        missing = unconverted(program)
        decomposable = [op for op in missing if op in decomposition_table and op not in tried and op not in DECOMPOSITIONS]
        if not decomposable:
            return program
        op = decomposable[0]
        tried.add(op)
        candidate = decomposed(program, {op: decomposition_table[op]})
        if candidate is not None and unconverted(candidate) <= missing - {op}:
            program = candidate


def to_relax(graph: Graph):
    """The Relax module for `graph`: weights bound as constants, one `main` with flat inputs."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    class Importer(ExportedProgramImporter):
        @staticmethod
        def _convert_pytorch_tensor_to_tvm(tensor: torch.Tensor):
            """Zero-element constants made compact on TVM's side; bfloat16 constants through ml_dtypes:
            the importer's fallback calls torch's numpy(), which has no bfloat16, when DLPack refuses a tensor."""
            import tvm

            if tensor.numel() == 0:
                from kiln.backends.tvm.runtime.executable import empty_tvm_tensor

                return empty_tvm_tensor(tensor, tvm.cpu())
            if tensor.dtype != torch.bfloat16:
                return ExportedProgramImporter._convert_pytorch_tensor_to_tvm(tensor)
            import ml_dtypes

            return tvm.runtime.tensor(tensor.detach().cpu().contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16))

        @staticmethod
        def _flatten_output_args(output_args) -> tuple:
            """No outputs at all is a program too (a model that returns only Python values, or
            None): an empty tuple, where the importer refuses one."""
            return () if output_args in ((), []) else ExportedProgramImporter._flatten_output_args(output_args)

        def _translate_fx_graph(self, graph_module, nodes, inputs_vars, custom_ops=None):
            """Kiln's converters in every graph, the branches of a torch.cond included: the
            importer passes its own table of them to the top-level graph alone, and called them
            with one argument inside a branch."""
            return super()._translate_fx_graph(graph_module, nodes, inputs_vars, custom_ops or set(CONVERTERS))

        def create_convert_map(self):
            return _NamingFailures(super().create_convert_map(), self, {node.name for node in graph.nodes})

    program = _decompose_unconverted(_program_for_import(graph))
    rewrite_dropped_arguments(program.graph)
    check_supported(program)
    return Importer().from_exported_program(program, False, False, False, CONVERTERS or None)


class _NamingFailures(dict):
    """The importer's converter table, each converter failing with Kiln's error naming the node,
    its op and the model line it came from, instead of a bare TVM or Python exception; and each
    Relax variable a converter emits named after the Kiln node it came from (torch keeps that in
    `from_node` through the decompositions), which is how the report and the profile say which
    nodes a fused kernel holds."""

    def __init__(self, converters: dict, importer, kiln_nodes: set[str]) -> None:
        super().__init__(converters)
        self.importer, self.kiln_nodes = importer, kiln_nodes

    def __getitem__(self, name: str) -> Callable[..., Any]:
        convert = super().__getitem__(name)

        def named(node: fx.Node, *importer) -> Any:
            builder = self.importer.block_builder
            emit = builder.emit
            source = kiln_node_name(node, self.kiln_nodes)
            builder.emit = lambda expr, name_hint="": emit(expr, name_hint or source)
            try:
                return convert(node, *importer)
            except KilnError:
                raise
            except Exception as error:
                shapes = ", ".join(str(tuple(a.meta["val"].shape)) for a in node.all_input_nodes
                                   if hasattr(a.meta.get("val"), "shape"))
                source = model_source(node)
                where = f"\n  from the model at:\n{source}" if source else ""
                raise BackendError(
                    f"the TVM importer failed on node '{node.name}' ({node.target}, inputs {shapes or 'none'}): "
                    f"{type(error).__name__}: {error}{where}", stage="import", node=node.name, op=str(node.target),
                    source=source) from error
            finally:
                builder.emit = emit

        return named


def kiln_node_name(node: fx.Node, kiln_nodes: set[str]) -> str:
    """The name of the Kiln graph node `node` (of the re-exported, decomposed program) came from:
    the nearest of its `from_node` ancestors that is one (its own name where none is)."""
    if node.name in kiln_nodes:
        return node.name
    sources = node.meta.get("from_node") or []
    source = sources[-1] if sources else None
    while source is not None:
        if source.name in kiln_nodes:
            return source.name
        source = source.from_node[-1] if source.from_node else None
    return node.name
