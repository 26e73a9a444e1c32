"""Runs an exported Kiln bundle on the board with nothing but TVM's runtime and numpy.

    python3 run.py                      # random inputs; prints output shapes and the latency
    python3 run.py inputs.npz out.npz   # inputs by name (see kiln_bundle.json), outputs saved

Copied verbatim into every bundle by `CompiledModule.export`; it must not import Kiln.
"""

import ctypes
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine  # not tvm.relax: the board may have only the runtime library

HERE = Path(__file__).resolve().parent


def _load_cuda_runtime() -> None:
    """A runtime-only TVM (a board's, a GPU server's) leaves its CUDA runtime library unloaded, and
    its hook that compiles kernels kept as CUDA source (a module built where no GPU driver was) asks
    TVM's compiler library for the architecture: load the one and tell the other this GPU's."""
    from tvm.base import _LOADED_LIBS, _RUNTIME_ONLY

    if not _RUNTIME_ONLY or "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    import tvm_ffi
    from tvm.support import nvcc
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
        package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL"
    )
    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def compile_for_this_gpu(code):
        return nvcc.compile_cuda(code, target_format="cubin", arch=arch, compiler="nvrtc")


# Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) on x86-64
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def request_amx_state() -> None:
    """Ask Linux for the AMX tile state (8 KB per thread, granted per process on request since
    Linux 5.16): without it the first tile instruction kills the process with SIGILL. Once is
    enough; asking again is harmless."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"Linux refused the AMX tile state this module's kernels need (arch_prctl: errno {error})")


def load_bundle(folder: Path = HERE):
    """(virtual machine, device, manifest) of the bundle in `folder`."""
    manifest = json.loads((folder / "kiln_bundle.json").read_text())
    vm, device = load_verified_module(folder, manifest, manifest)
    return vm, device, manifest


def load_verified_module(folder: Path, library: dict, manifest: dict):
    """(virtual machine, device) of the library `library` names ("library", "library_sha256"),
    checked first; `manifest` says the device and the CPU features the kernels use."""
    path = _verified_library(folder, library)
    if manifest["device"] == "cuda":
        _load_cuda_runtime()
    device = tvm.cuda(0) if manifest["device"] == "cuda" else tvm.cpu(0)
    if "amx-tile" in manifest.get("cpu_features", []):
        request_amx_state()
    return VirtualMachine(tvm.runtime.load_module(str(path)), device), device


class BundleError(Exception):
    """The bundle's library is not the one it was exported with."""


def _verified_library(folder: Path, manifest: dict) -> Path:
    """The library's path, once its name is a plain file of this folder and its SHA-256 is the
    manifest's: checked before it is mapped, since mapping a library runs its code."""
    name = manifest.get("library", "")
    path = folder / name
    if not name or "/" in name or "\\" in name or name in (".", "..") or path.is_symlink() or not path.is_file():
        raise BundleError(f"the bundle's manifest names library {name!r}: not a plain file of {folder}; refused")
    if hashlib.sha256(path.read_bytes()).hexdigest() != manifest.get("library_sha256"):
        raise BundleError(f"{path}: its SHA-256 is not the one the bundle's manifest records; refused (re-export the bundle)")
    return path


def main(argv):
    vm, device, manifest = load_bundle()
    if argv:
        given = np.load(argv[0])
        arrays = [given[spec["name"]] for spec in manifest["inputs"]]
    else:
        rng = np.random.default_rng(0)
        arrays = [
            rng.standard_normal([d if isinstance(d, int) else 1 for d in spec["shape"]]).astype(spec["dtype"])
            for spec in manifest["inputs"]
        ]
    vm.set_input("main", *[tvm.runtime.tensor(a, device=device) for a in arrays])
    vm.invoke_stateful("main")
    outputs = vm.get_outputs("main")
    outputs = [outputs] if isinstance(outputs, tvm.runtime.Tensor) else list(outputs)
    results = {spec["name"]: out.numpy() for spec, out in zip(manifest["outputs"], outputs)}
    for name, value in results.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
    if len(argv) > 1:
        np.savez(argv[1], **results)
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=10)
    print(f"latency: {timer('main').median * 1e3:.2f} ms (median of 10) on target {manifest['target']}")


if __name__ == "__main__":
    main(sys.argv[1:])
