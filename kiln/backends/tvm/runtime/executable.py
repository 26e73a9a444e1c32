"""A built Relax module. Here it runs on the Relax VM with torch tensors in and out through DLPack
(no copies; CUDA tensors stay on the GPU) when the target's CPU is this machine's and its device
is present. A module cross-compiled for a board is kept as its shared library, linked with the
target's cross toolchain, to be saved, exported or run on the board (`remote.py`)."""

from __future__ import annotations

import os
import platform
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch
import tvm
from tvm import relax
from tvm.runtime import _ffi_api as tvm_runtime_api
from tvm.support import cc

from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.runtime.bundle_runner import request_amx_state
from kiln.backends.tvm.runtime.threads import pool_size, use_threads
from kiln.errors import ArtifactError, TargetError
from kiln.timing import median_seconds

LIBRARY_FILE = "module.so"
PROGRAM_FILE, KERNELS_FILE = "program.bin", "kernels.so"  # a `local` artifact's two files


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
    ) -> None:
        self.target = target
        self.threads = threads
        self.library = library  # built in this process, or loaded here
        self.shared_library = shared_library  # a loaded board library this machine cannot load
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
        if self._main is None:
            reason = self.why_not_here()
            if reason is not None:
                raise TargetError(reason)
            if "amx-tile" in self.target.cpu_features:
                try:
                    request_amx_state()
                except OSError as error:
                    raise TargetError(f"target '{self.target.name}' may run AMX tile kernels: {error.strerror}") from None
            self._main = relax.VirtualMachine(self.library, _device(self.target))["main"]
        return self._main

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        main = self._vm_main()
        if self.target.device == "cpu":
            use_threads(self._thread_count)
        else:
            inputs = [t.to("cuda") for t in inputs]  # CPU tensors are copied over; CUDA ones are not
        result = main(*[_tvm_input(t, _device(self.target)) for t in inputs])
        flat = list(result) if not isinstance(result, tvm.runtime.Tensor) else [result]
        return [torch.from_dlpack(t) for t in flat]

    def median_seconds(self, inputs: Sequence[torch.Tensor], repeat: int) -> float:
        return median_seconds(lambda: self(inputs), repeat)

    def module_kinds(self) -> set[str]:
        """Kinds of the built module and of every module it imports ("llvm", "cuda", ...): the CUDA
        kernels hang under the host code. Empty for a board library loaded as bytes."""
        kinds, pending = set(), [self.library.mod] if self.library is not None else []
        while pending:
            module = pending.pop()
            kinds.add(module.kind)
            pending.extend(module.imports)
        return kinds

    @property
    def built(self) -> "TVMExecutable":
        """The module as built (a remote one wraps it); what exports and uploads are made from."""
        return self

    def write_shared_library(self, path: Path) -> None:
        """The module as one shared library for the target's CPU, weights included."""
        if self.library is None:
            path.write_bytes(self.shared_library)
            return
        toolchain = self.target.toolchain
        _export(self.library.mod, path, cc.cross_compiler(toolchain.require(self.target.name)) if toolchain else None)

    def save(self, folder: Path, local: bool = False) -> None:
        """module.so: one shared library with everything, for any machine of the target (and its
        boards). `local` (the compile cache): the VM program with its weights (program.bin) and
        the kernels' library (kernels.so) apart; written and loaded in a fraction of the time,
        since 400 MB of weights no longer go through LLVM and the linker as one constant array."""
        if not local or self.library is None or self.target.cross:
            self.write_shared_library(folder / LIBRARY_FILE)
            return
        program = self.library.mod
        program.write_to_file(str(folder / PROGRAM_FILE))
        if program.imports:
            (kernels,) = program.imports
            # one object after another: the cache stores on a thread of its own, which may still
            # be writing while the interpreter exits, when no thread pool can start
            _export(kernels, folder / KERNELS_FILE, None, parallel=False)

    def shared_library_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / LIBRARY_FILE
            self.write_shared_library(path)
            return path.read_bytes()

    @classmethod
    def load(cls, folder: Path, target: ResolvedTarget, threads: int | None) -> "TVMExecutable":
        """Loaded into this process only where it can run here; otherwise kept as bytes for the board
        (this machine could not even load it: wrong CPU, or no CUDA runtime)."""
        if (folder / PROGRAM_FILE).is_file():
            return cls._load_program(folder, target, threads)
        path = folder / LIBRARY_FILE
        data = path.read_bytes()
        found = elf_architecture(data)
        if found != target.architecture:
            raise ArtifactError(
                f"the artifact's library is {found or 'not an ELF shared library'}, but its manifest says it is built "
                f"for target '{target.name}' ({target.architecture}); refused before loading it"
            )
        executable = cls(target, threads, shared_library=data)
        if executable.why_not_here() is None:
            try:
                executable.library, executable.shared_library = tvm.runtime.load_module(str(path)), None
            except Exception as error:  # dlopen's and TVM's errors, whatever the library held
                raise ArtifactError(f"the artifact's library could not be loaded: {str(error).splitlines()[-1]}") from error
        return executable

    @classmethod
    def _load_program(cls, folder: Path, target: ResolvedTarget, threads: int | None) -> "TVMExecutable":
        """A `local` artifact: its kernels' library checked for this CPU, then the program loaded
        with the library as its import."""
        executable = cls(target, threads)
        reason = executable.why_not_here()
        if reason is not None:
            raise TargetError(reason)
        kernels = folder / KERNELS_FILE
        if kernels.is_file() and elf_architecture(_elf_header(kernels)) != target.architecture:
            raise ArtifactError(f"the artifact's kernel library is not for target '{target.name}' ({target.architecture}); "
                                "refused before loading it")
        try:
            program = tvm.get_global_func("ffi.Module.load_from_file.relax.VMExecutable")(str(folder / PROGRAM_FILE))
            if kernels.is_file():
                program.import_module(tvm.runtime.load_module(str(kernels)))
        except Exception as error:  # TVM's and dlopen's errors, whatever the files held
            raise ArtifactError(f"the artifact's program could not be loaded: {str(error).splitlines()[-1]}") from error
        executable.library = relax.VMExecutable(program)
        return executable


def _elf_header(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(64)


def _export(root: tvm.runtime.Module, path: Path, compiler, parallel: bool = True) -> None:
    """`root.export_library(path)`; for a library of LLVM modules alone (kiln/backends/tvm/pipeline.py
    builds one per core) their object files are emitted in parallel threads, where TVM writes
    them one after another (LLVM's code generation again). The rest is TVM's own: the import tree
    packed as devc.o, everything linked into one shared library."""
    modules = root._collect_dso_modules()
    if any(module.kind != "llvm" for module in modules):
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
            tvm_runtime_api.ModulePackImportsToLLVM(root, system_lib, first.get_function("_get_target_string")(), prefix).write_to_file(packed)
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
