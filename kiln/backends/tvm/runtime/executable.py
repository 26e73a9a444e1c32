"""A built Relax module. Here it runs on the Relax VM with torch tensors in and out through DLPack
(no copies; CUDA tensors stay on the GPU) when the target's CPU is this machine's and its device
is present. A module cross-compiled for a board is kept as its shared library, linked with the
target's cross toolchain, to be saved, exported or run on the board (`remote.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
import tvm
from tvm import relax
from tvm.runtime import _ffi_api as tvm_runtime_api
from tvm.support import cc

from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.runtime.bundle_runner import (WEIGHTS_STEM, BundleError, read_weights, request_amx_state, weight_files,
                                                     with_weights)
from kiln.backends.tvm.runtime.index_checks import IndexCheck, check_indices
from kiln.backends.tvm.runtime.threads import pool_size, use_threads
from kiln.errors import ArtifactError, TargetError
from kiln.backends.tvm.runtime.weights_file import write_weights
from kiln.timing import median_seconds

if TYPE_CHECKING:
    import numpy as np

LIBRARY_FILE = "module.so"
KERNELS_FILE = "kernels.json"  # per kernel: FLOPs and instructions, for cm.profile()
INDEX_CHECKS_FILE = "index_checks.json"  # the guarded indices the program's last output reports (index_guard.py)
_WRITING = threading.Lock()  # one library export at a time: TVM's code emission is not reentrant


def _device(target: ResolvedTarget) -> tvm.runtime.Device:
    return tvm.cuda(0) if target.device == "cuda" else tvm.cpu(0)


TVM_ALIGNMENT = 64  # bytes: TVM's DLPack import refuses less-aligned data (e.g. a numpy view)


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, or an aligned copy of it where its data is not 64-byte aligned."""
    if tensor.data_ptr() % TVM_ALIGNMENT == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def empty_tvm_tensor(tensor: torch.Tensor, device: tvm.runtime.Device) -> tvm.runtime.Tensor:
    """A zero-element tensor made on TVM's side: PyTorch gives its empty axes stride 1 where TVM's
    argument check wants the compact strides (0), so passing PyTorch's own fails at call time."""
    return tvm.runtime.empty(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), device)


def _tvm_input(tensor: torch.Tensor, device: tvm.runtime.Device) -> tvm.runtime.Tensor:
    """The tensor as TVM's compiled code expects it: compact, aligned."""
    if tensor.numel() == 0:
        return empty_tvm_tensor(tensor, device)
    return tvm.runtime.from_dlpack(_aligned(tensor.detach().contiguous()))


class TVMExecutable:
    def __init__(
        self,
        target: ResolvedTarget,
        threads: int | None = None,
        library: tvm.runtime.Module | None = None,
        shared_library: bytes | None = None,
        weights: Sequence[tvm.runtime.Tensor] = (),
        kernels: dict[str, dict] | None = None,
        index_checks: Sequence[IndexCheck] = (),
    ) -> None:
        self.target = target
        self.threads = threads
        self.library = library  # built in this process, or loaded here
        self.shared_library = shared_library  # the library's file as loaded (a board's, which this machine cannot load)
        self.weights = list(weights)  # main's trailing parameters (kiln/backends/tvm/weights.py), in host memory
        self.kernel_info = kernels or {}  # per kernel: FLOPs, instructions (pipeline.kernel_info), for cm.profile()
        self.index_checks = list(index_checks)
        self._main = None
        self._thread_count = threads or pool_size()

    def why_not_here(self) -> str | None:
        """Why this module cannot run on this machine, or None when it can."""
        if self.target.cross:
            return (
                f"this module is built for target '{self.target.name}' ({self.target.architecture}) and this machine is "
                f"{platform.machine()}: run it on the board with cm.to_remote('host:port'), or cm.export(folder) to deploy it"
            )
        missing = self.target.missing_cpu_features()
        if missing:
            return (
                f"this module is built for target '{self.target.name}', whose kernels use {', '.join(missing)}, and this "
                f"machine's CPU lacks {'it' if len(missing) == 1 else 'them'}: compile for target 'llvm' here "
                f"(the host's CPU is detected), or run it on a CPU that has {'it' if len(missing) == 1 else 'them'}"
            )
        if self.target.device == "cuda" and not tvm.cuda(0).exist:
            return (
                f"no CUDA device: this module is built for target '{self.target.name}' "
                f"({self.target.tvm_target.get('arch')}) and this machine has no CUDA GPU"
            )
        return None

    def _vm_main(self):
        """The program's `main` as a function of the inputs alone: the weights follow them."""
        if self._main is None:
            self._main = self._new_main()
        return self._main

    def instrumented_vm(self, instrument) -> "Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]":
        """Like calling this module, on a VM of its own whose every call goes through
        `instrument` (`relax.VirtualMachine.set_instrument`): what cm.profile() times."""
        main = self._new_main(instrument)
        return lambda inputs: self._run(main, inputs)

    def _new_main(self, instrument=None):
        """A VM's `main` with the weights bound, `instrument` hooked into its calls where given."""
        reason = self.why_not_here()
        if reason is not None:
            raise TargetError(reason)
        if "amx-tile" in self.target.cpu_features:
            try:
                request_amx_state()
            except OSError as error:
                raise TargetError(f"target '{self.target.name}' may run AMX tile kernels: {error.strerror}") from None
        device = _device(self.target)
        vm = relax.VirtualMachine(self.library, device)
        if instrument is not None:
            vm.set_instrument(instrument)
        return with_weights(vm["main"], [w if self.target.device == "cpu" else w.copyto(device) for w in self.weights])

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._run(self._vm_main(), inputs)

    def _run(self, main, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.target.device == "cpu":
            use_threads(self._thread_count)
        else:
            inputs = [t.to("cuda") for t in inputs]  # CPU tensors are copied over; CUDA ones are not
        result = main(*[_tvm_input(t, _device(self.target)) for t in inputs])
        flat = list(result) if not isinstance(result, tvm.runtime.Tensor) else [result]
        return self.checked([torch.from_dlpack(t) for t in flat])

    def checked(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The program's outputs without the report of its indices, once that report says every
        index was in range (IndexOutOfRangeError otherwise: kiln/backends/tvm/index_guard.py)."""
        if self.index_checks:
            check_indices(self.index_checks, outputs.pop())
        return outputs

    def median_seconds(self, inputs: Sequence[torch.Tensor], repeat: int) -> float:
        return median_seconds(lambda: self(inputs), repeat)

    def module_kinds(self) -> set[str]:
        """Kinds of the built module and of every module it imports ("llvm", "cuda", ...): the CUDA
        kernels hang under the host code. Empty for a board library loaded as bytes."""
        return {module.kind for module in self._modules()}

    def device_source(self) -> str:
        """The CUDA C of a GPU build's kernels, as generated (what nvcc compiled): the structure
        tests read tensor-core instructions from. Empty for CPU builds and loaded ones."""
        return "\n".join(module.inspect_source() for module in self._modules() if module.kind == "cuda")

    def _modules(self) -> Iterator[tvm.runtime.Module]:
        pending = [self.library.mod] if self.library is not None and self.shared_library is None else []
        while pending:
            module = pending.pop()
            yield module
            pending.extend(module.imports)

    @property
    def built(self) -> "TVMExecutable":
        """The module as built (a remote one wraps it); what exports and uploads are made from."""
        return self

    def write_shared_library(self, path: Path) -> None:
        """The program and its kernels as one shared library for the target's CPU (the weights
        are `write_weights`'); a loaded one as it was loaded."""
        if self.shared_library is not None:
            path.write_bytes(self.shared_library)
            return
        toolchain = self.target.toolchain
        with _WRITING:  # the compile cache may be storing this module on its own thread
            _export(self.library.mod, path, cc.cross_compiler(toolchain.require(self.target.name)) if toolchain else None,
                    parallel=threading.current_thread() is threading.main_thread())

    def write_weights(self, folder: Path, stem: str = WEIGHTS_STEM) -> None:
        """`stem`.bin and `stem`.json (kiln/backends/tvm/weights.py), where the program has weights."""
        if self.weights:
            write_weights(folder, self.weights, stem)

    def save(self, folder: Path) -> None:
        """module.so (the program and kernels: any machine of the target, and its boards), the
        weights beside it, and what the profile knows of each kernel."""
        self.write_shared_library(folder / LIBRARY_FILE)
        self.write_weights(folder)
        (folder / KERNELS_FILE).write_text(json.dumps(self.kernel_info))
        (folder / INDEX_CHECKS_FILE).write_text(json.dumps([check.to_json() for check in self.index_checks]))

    def shared_library_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / LIBRARY_FILE
            self.write_shared_library(path)
            return path.read_bytes()

    @classmethod
    def load(cls, folder: Path, target: ResolvedTarget, threads: int | None,
             mapped: dict[str, "np.ndarray"] | None = None) -> "TVMExecutable":
        """Loaded into this process only where it can run here; otherwise kept as bytes for the board
        (this machine could not even load it: wrong CPU, or no CUDA runtime). The weights are mapped
        from their file, or from `mapped` (an artifact's stored member, by file name)."""
        path = folder / LIBRARY_FILE
        data = path.read_bytes()
        found = elf_architecture(data)
        if found != target.architecture:
            raise ArtifactError(
                f"the artifact's library is {found or 'not an ELF shared library'}, but its manifest says it is built "
                f"for target '{target.name}' ({target.architecture}); refused before loading it"
            )
        try:
            weights = read_weights(folder, tvm.cpu(0), (mapped or {}).get(weight_files()[0]))
        except BundleError as error:
            raise ArtifactError(f"the artifact's weights: {error}") from None
        executable = cls(target, threads, shared_library=data, weights=weights, kernels=_kernel_info(folder / KERNELS_FILE),
                         index_checks=_index_checks(folder / INDEX_CHECKS_FILE))
        if executable.why_not_here() is None:
            try:
                with quiet_tvm_warnings():
                    executable.library = tvm.runtime.load_module(str(path))
            except Exception as error:  # dlopen's and TVM's errors, whatever the library held
                raise ArtifactError(f"the artifact's library could not be loaded: {str(error).splitlines()[-1]}") from error
        return executable


_STDERR = threading.Lock()


@contextlib.contextmanager
def quiet_tvm_warnings() -> Iterator[None]:
    """TVM 0.27's VM executable logs a line ("Warning: Scope Saving:" / "Scope Loaded:") for each
    storage scope it serializes or reads, hundreds for a CNN, on every save and load: those lines
    are dropped, whatever else TVM writes to stderr meanwhile is passed on. One redirection at a
    time: the compile cache saves on a thread of its own."""
    with _STDERR, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if "Warning: Scope " not in line]
            if kept:
                sys.stderr.write("".join(kept))


def _kernel_info(path: Path) -> dict[str, dict]:
    """The saved per-kernel facts, or none where the artifact has none (older, or not a dict)."""
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) and all(isinstance(v, dict) for v in info.values()) else {}


def _index_checks(path: Path) -> list[IndexCheck]:
    """The saved index checks; none where the artifact has none (one built before them). A file
    that is not a list of checks is refused: the library would return an output too many."""
    if not path.is_file():
        return []
    try:
        return [IndexCheck.from_json(check) for check in json.loads(path.read_text())]
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path.name}: not a list of index checks ({error})") from None


def _export(root: tvm.runtime.Module, path: Path, compiler, parallel: bool = True) -> None:
    """`root.export_library(path)`; for a library of LLVM modules alone (kiln/backends/tvm/pipeline.py
    builds one per core) their object files are emitted in parallel threads, where TVM writes
    them one after another (LLVM's code generation again). The rest is TVM's own: the import tree
    packed as devc.o, everything linked into one shared library."""
    modules = root._collect_dso_modules()
    if any(module.kind != "llvm" for module in modules):
        with quiet_tvm_warnings():
            root.export_library(str(path), fcompile=compiler)
        return
    with tempfile.TemporaryDirectory() as workspace:
        objects = [str(Path(workspace) / f"lib{index}.o") for index in range(len(modules))]
        workers = max(1, min(len(modules), len(os.sched_getaffinity(0)))) if parallel else 1
        if workers == 1:
            for module, file in zip(modules, objects):
                module.write_to_file(file)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda module_and_file: module_and_file[0].write_to_file(module_and_file[1]), zip(modules, objects)))
        first = modules[0]
        system_lib = first.get_function("__tvm_is_system_module")()
        prefix = first.get_function("__tvm_get_system_lib_prefix")() or ""
        if root.imports:
            packed = str(Path(workspace) / f"{prefix}devc.o")
            with quiet_tvm_warnings():
                imports = tvm_runtime_api.ModulePackImportsToLLVM(root, system_lib, first.get_function("_get_target_string")(), prefix)
            imports.write_to_file(packed)
            objects.append(packed)
        (compiler or cc.create_shared)(str(path), objects)


# ELF e_machine values, named as ResolvedTarget.architecture names them
_ELF_MACHINES = {3: "x86", 40: "armv7", 62: "x86_64", 183: "aarch64"}


def elf_architecture(data: bytes) -> str | None:
    """The CPU architecture an ELF shared library is for, from its header; None when `data` is
    not an ELF shared object (a library for another CPU is refused before dlopen sees it)."""
    if len(data) < 20 or data[:4] != b"\x7fELF" or data[5] not in (1, 2):
        return None
    order = "little" if data[5] == 1 else "big"
    if int.from_bytes(data[16:18], order) != 3:  # ET_DYN
        return None
    machine = int.from_bytes(data[18:20], order)
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")
