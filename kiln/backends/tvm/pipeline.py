"""The Relax pipeline Kiln runs for CPU targets, one named pass at a time so that each appears in
the compile report (time, functions) and, with a debug directory, as a numbered IR dump.

TVM 0.27's default `llvm` pipeline only legalizes; Kiln adds channels-last layout, weight packing,
fusion, constant folding, tuned schedules from the database and the rules of `schedules.py`.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_lowering
from tvm.relax import vm_build
from tvm.relax.backend.cuda import pipeline as cuda_lowering
from tvm.s_tir import dlight as dl
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.target import Target

from kiln.backends.tvm.cpu.pack_weights import pack_weights
from kiln.backends.tvm.cuda.int8_operands import signed_int8_operands
from kiln.backends.tvm import legalize  # noqa: F401 - registers Kiln's legalizations with TVM
from kiln.backends.tvm.fast_math import FastMath
from kiln.backends.tvm.fold_weights import fold_weight_layouts
from kiln.backends.tvm.weights import lift_weights
from kiln.backends.tvm.cpu.register_tile import vector_unit
from kiln.backends.tvm.reproducer import write_reproducer
from kiln.backends.tvm.cpu.schedules import STRATEGY_ANNOTATION
from kiln.backends.tvm.schedule_rules import schedule_rules
from kiln.backends.tvm.tuning.database import TuningDatabase
from kiln.backends.tvm.cpu.dot_instructions import DOT_INSTRUCTIONS, bf16_dots, integer_dots
from kiln.passes.loop import Step, StepOutcome


# TVM marks `round` vectorizable but not `nearbyint`, which Relax's round legalizes to (both become
# LLVM's nearbyint): a loop with one stayed scalar, and LLVM then vectorized it with gathers and
# byte-by-byte stores
tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)

_MAX_CODEGEN_THREADS = 8

# (name, factory): a factory makes a pass, or a function of a module to a module
NamedPasses = list[tuple[str, Callable[[], Callable[[tvm.IRModule], tvm.IRModule]]]]


def fusion_passes(target: Target) -> NamedPasses:
    """(name, factory) of the Relax passes from the imported graph to fused, unscheduled TIR: the
    functions that tuning measures and the schedule rules schedule."""
    on_cpu = target.kind.name == "llvm"
    cpu_layout: NamedPasses = [
        # channels-last: the output channel, the axis the schedules vectorize, is contiguous in
        # activations and weights; weight transposes fold into constants, activation ones sit at
        # the graph's edges; a transposed convolution stays channels-first, the one layout TVM
        # lowers it in (NHWC carried into it reached VM codegen unlowered: every U-Net decoder)
        ("ConvertLayout", lambda: _conv2d_layout({"relax.nn.conv2d": ["NHWC", "HWIO"],
                                                  "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})),
        # W.T of linear layers and HWIO conv weights become constants, in torch; TVM folds the rest
        ("FoldWeightLayouts", fold_weight_layouts),
        ("FoldConstantWeights", relax.transform.FoldConstant),
        ("PackWeights", lambda: pack_weights(vector_unit(target), integer_dots(target) + bf16_dots(target))),
    ]
    gpu_operands: NamedPasses = [("SignedInt8Operands", signed_int8_operands)]  # int8 layers on the tensor cores
    return [
        ("DecomposeOpsForInference", relax.transform.DecomposeOpsForInference),
        *(cpu_layout if on_cpu else gpu_operands),
        # exp, erf, tanh and softmax as vectorizable polynomials (~1e-7 relative error) instead
        # of scalar libm calls
        ("FastMath", FastMath),
        ("LegalizeOps", relax.transform.LegalizeOps),
        ("AnnotateTIROpPattern", relax.transform.AnnotateTIROpPattern),
        ("FoldConstant", relax.transform.FoldConstant),
        ("FuseOps", relax.transform.FuseOps),
        ("FuseTIR", relax.transform.FuseTIR),
        ("DeadCodeElimination", relax.transform.DeadCodeElimination),
    ]


def _conv2d_layout(layouts: dict[str, list[str]]) -> Callable[[tvm.IRModule], tvm.IRModule]:
    """ConvertLayout for graphs with a 2-D convolution; others keep their layout. TVM's pass only
    pays for convolutions, and it fails on some graphs without one (std::bad_alloc on 1-D
    pooling, an illegal instruction on ONNX's expanded AffineGrid)."""

    def run(mod: tvm.IRModule) -> tvm.IRModule:
        return relax.transform.ConvertLayout(layouts)(mod) if _calls(mod, "relax.nn.conv2d") else mod

    return run


def _calls(mod: tvm.IRModule, op_name: str) -> bool:
    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
            found.append(expr)

    for function in mod.functions.values():
        if isinstance(function, relax.Function):
            relax.analysis.post_order_visit(function.body, visit)
    return bool(found)


def schedule_passes(database: TuningDatabase | None, target: Target) -> NamedPasses:
    """Tuned schedules from the database where it has them, the default rules for the rest; a
    database that is not what TVM wrote is refused here, before TVM parses it."""
    tuned = []
    if database is not None and database.exists():
        database.check()
        tuned = [("ApplyTuningDatabase", database.apply_pass)]
    name = "ScheduleGPU" if target.kind.name == "cuda" else "ScheduleCPU"
    return tuned + [(name, lambda: dl.ApplyDefaultSchedule(*schedule_rules(target)))]


def _describe(mod: tvm.IRModule) -> str:
    prims = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    scheduled = [f for f in prims if f.attrs and f.attrs.get("tirx.is_scheduled", False)]
    counts: dict[str, int] = {}
    for function in scheduled:
        for mnemonic in _instructions(function):
            counts[mnemonic] = counts.get(mnemonic, 0) + 1
    on_units = "; dot-product kernels on " + ", ".join(f"{name} {count}" for name, count in counts.items()) if counts else ""
    return f"{len(prims)} TIR functions ({len(scheduled)} scheduled), {len(mod.functions) - len(prims)} Relax{on_units}"


_SCRIPTS: dict[tvm.tirx.PrimFunc, str] = {}  # the last scheduled functions' text: the report row and kernel_info read it


def _instructions(function: tvm.tirx.PrimFunc) -> list[str]:
    """The dot-product instructions (or AMX tiles) a function runs on, by mnemonic: what the
    report says an int8 model ran on."""
    if function not in _SCRIPTS:
        if len(_SCRIPTS) > 4096:
            _SCRIPTS.clear()
        _SCRIPTS[function] = function.script(show_meta=False)
    text = _SCRIPTS[function]
    return [dot.mnemonic for dot in DOT_INSTRUCTIONS if f'"{dot.llvm_base_name}' in text]


def kernel_info(mod: tvm.IRModule, sources: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Per kernel of a scheduled module: its FLOPs (TVM's estimate from the TIR, None where the
    estimate fails, as on tensorized code), the dot-product instructions it uses, and the
    strategies of kiln/backends/tvm/cpu/schedules.py that scheduled its blocks (on a GPU, a
    tensor-core GEMM's tile: "wmma_gemm_32x64"; none: a tuning record's schedule, or DLight's),
    and the Kiln nodes it computes (`sources`,
    kiln/backends/tvm/provenance.py). What `cm.profile()` shows per kernel."""
    info = {}
    for var, function in mod.functions.items():
        if isinstance(function, tvm.tirx.PrimFunc):
            try:
                flops = float(estimate_tir_flops(tvm.IRModule({"main": function})))
            except Exception:  # noqa: BLE001 - TVM's estimator refuses some intrinsics; the profile then has no rate
                flops = None
            _instructions(function)  # its text, cached
            strategies = sorted(set(re.findall(rf'"{STRATEGY_ANNOTATION}": "(\w+)"', _SCRIPTS[function])))
            info[var.name_hint] = {"flops": flops, "instructions": ", ".join(_instructions(function)), "rule": ", ".join(strategies),
                                   "sources": (sources or {}).get(var.name_hint, [])}
    return info


def tvm_steps(passes: NamedPasses, target: Target, debug_path,
              observe: Callable[[str, tvm.IRModule, tvm.IRModule], None] | None = None) -> list[Step]:
    """TVM's passes as steps of the pass loop (kiln/passes/loop.py), each run under `target` and
    noting the functions it left; a pass that fails writes its reproducer into `debug_path` (or
    a temporary folder). `observe(name, before, after)` sees every pass."""

    def step(name: str, make_pass: Callable[[], Callable[[tvm.IRModule], tvm.IRModule]]) -> Step:
        def run(mod: tvm.IRModule) -> StepOutcome:
            try:
                with target:
                    after = make_pass()(mod)
            except Exception as error:
                raise write_reproducer(mod, target, name, make_pass, debug_path, error) from error
            if observe is not None:
                observe(name, mod, after)
            return StepOutcome(after, note=_describe(after))

        return Step(name, "tvm", run)

    return [step(name, make_pass) for name, make_pass in passes]


def lowering_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Relax → VM bytecode: TVM's stock lowering for the device, after Kiln's graph passes."""
    stock = cuda_lowering if target.kind.name == "cuda" else cpu_lowering
    return tvm.transform.Sequential(stock.dataflow_lower_passes(target) + stock.finalize_passes(target))


def compile_module(mod: tvm.IRModule, target: tvm.target.Target,
                   lift: bool = False) -> tuple[relax.VMExecutable, list[tvm.runtime.Tensor]]:
    """`tvm.compile(mod, target)` with Kiln's lowering, its kernels compiled on every core; with
    `lift`, `main`'s weights made its trailing parameters (kiln/backends/tvm/weights.py) and
    returned beside the program (else that list is empty).

    TVM lowers and code-generates all TIR functions as one LLVM module on one thread: 4 of a
    ResNet-18's 11 s compile. The functions are independent, so they are built here as one LLVM
    module per core, in threads (TVM's FFI releases the GIL), and linked as imports of the first;
    the VM finds a kernel in any of them and `export_library` links all their objects into one .so."""
    with target:
        mod = lowering_pipeline(target)(mod)
    mod, weights = lift_weights(mod) if lift else (mod, [])
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    kernels = vm_build._filter_tir(mod)
    if kernels is not None:
        kernels = vm_build._auto_attach_system_lib_prefix(kernels, target, None)
    library = _build_kernels(kernels, target) if kernels is not None else None
    return relax.VMExecutable(vm_build._ffi_api.VMLink(builder, target, library, [], {})), weights


def _build_kernels(kernels: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    functions = list(kernels.functions.items())
    # a GPU build's host and device modules stay one (each group would carry its own device module)
    cores = len(os.sched_getaffinity(0)) if target.kind.name == "llvm" else 1
    workers = max(1, min(len(functions), cores, _MAX_CODEGEN_THREADS))
    groups = [tvm.IRModule(dict(functions[i::workers]), attrs=kernels.attrs) for i in range(workers)]

    runs_here = target.kind.name == "llvm" and str(target.attrs.get("mtriple", "")) in ("", _host_triple())

    def build_group(group: tvm.IRModule) -> tvm.runtime.Module:
        library = tvm.tirx.build(group, target=target, pipeline="default")
        if runs_here:  # LLVM's JIT compiles a module on its first lookup: done here, on this core, not serially later
            library.get_function(group.get_global_vars()[0].name_hint, query_imports=False)
        return library

    with ThreadPoolExecutor(workers) as pool:
        first, *rest = pool.map(build_group, groups)
    for library in rest:
        first.import_module(library)
    return first


def _host_triple() -> str:
    return str(tvm.get_global_func("target.llvm_get_system_triple")())


def codegen_step(target: Target, debug_path, check: Callable[[tvm.IRModule], None],
                 make: Callable[[tvm.IRModule, relax.VMExecutable, list], Any]) -> Step:
    """Code generation as the loop's last step: `check(mod)` first (it may refuse the module),
    then the program, its weights apart (`compile_module(..., lift=True)`), made into an
    executable by `make(mod, program, weights)`."""

    def run(mod: tvm.IRModule) -> StepOutcome:
        check(mod)
        try:
            program, weights = compile_module(mod, target, lift=True)
        except Exception as error:
            raise write_reproducer(mod, target, "codegen", None, debug_path, error) from error
        return StepOutcome(make(mod, program, weights), note=str(target.attrs.get("mcpu", "")))

    return Step("codegen", "tvm", run)
