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
import time
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine  # not tvm.relax: the board may have only the runtime library

HERE = Path(__file__).resolve().parent

# the program's weights, its trailing parameters (kiln/backends/tvm/weights.py writes them):
# STEM.bin, indexed by STEM.json
WEIGHTS_STEM = "weights"
WEIGHT_ALIGNMENT = 64  # bytes: TVM's DLPack import refuses less-aligned data
_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
                "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1}


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
    """(main, device, manifest) of the bundle in `folder`; `main(*inputs)`."""
    manifest = json.loads((folder / "kiln_bundle.json").read_text())
    main, device = load_verified_module(folder, manifest, manifest)
    return main, device, manifest


def load_verified_module(folder: Path, library: dict, manifest: dict):
    """(main, device) of the library `library` names ("library", "library_sha256"; "weights", the
    stem of its weights' files), checked first; `manifest` says the device and the CPU features
    the kernels use. `main(*inputs)` runs the program with its weights."""
    path = _verified_library(folder, library)
    if manifest["device"] == "cuda":
        _load_cuda_runtime()
    device = tvm.cuda(0) if manifest["device"] == "cuda" else tvm.cpu(0)
    if "amx-tile" in manifest.get("cpu_features", []):
        request_amx_state()
    weights = []
    if library.get("weights"):
        if weights_sha256(folder, library["weights"]) != library.get("weights_sha256"):
            raise BundleError(f"{folder}: the weights' SHA-256 is not the one the bundle's manifest records; refused")
        weights = read_weights(folder, device, stem=library["weights"], required=True)
    return with_weights(VirtualMachine(tvm.runtime.load_module(str(path)), device)["main"], weights), device


def with_weights(main, weights: list):
    """`main` as a function of the inputs alone: the weights, its trailing parameters, follow them."""
    return (lambda *inputs: main(*inputs, *weights)) if weights else main


class BundleError(Exception):
    """The bundle's library or weights are not the ones it was exported with."""


def weight_files(stem: str = WEIGHTS_STEM) -> tuple:
    """The weights' file and its index."""
    return f"{stem}.bin", f"{stem}.json"


def weights_sha256(folder: Path, stem: str = WEIGHTS_STEM) -> str:
    """SHA-256 of the weights' index, then their file: what a bundle's manifest records."""
    digest = hashlib.sha256()
    for name in reversed(weight_files(stem)):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: the bundle's manifest names it, and it is not a plain file of {folder}; refused")
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(16 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_weights(folder: Path, device, data=None, stem: str = WEIGHTS_STEM, required: bool = False) -> list:
    """The program's weights as TVM tensors on `device` ([] for a program that has none), in
    parameter order. The file is mapped, not read: a CPU tensor is a view of the mapping
    (copy-on-write, so the file is never written). `data`: the file's bytes, already mapped
    (an artifact's stored member). `required`: a missing index is an error (a manifest names it). Every entry of the index is checked against the file, which
    may be anyone's: known dtype, a shape its byte count matches, a range inside the file."""
    data_name, index_name = weight_files(stem)
    index_path = folder / index_name
    if not index_path.is_file():
        if required:
            raise BundleError(f"{index_path}: the manifest names these weights, and their index is missing")
        return []
    try:
        tensors = json.loads(index_path.read_text())["tensors"]
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{index_path}: not a weights index ({error})") from None
    if data is None:
        path = folder / data_name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: the weights index names it, and it is not a plain file; refused")
        data = np.memmap(path, dtype=np.uint8, mode="c") if path.stat().st_size else np.zeros(0, np.uint8)
    return [_weight(data, entry, device, position) for position, entry in enumerate(tensors)]


def _weight(data, entry, device, position: int):
    try:
        dtype, shape, offset, size = entry["dtype"], entry["shape"], entry["offset"], entry["bytes"]
        valid = (dtype in _DTYPE_BYTES and all(type(d) is int and d >= 0 for d in shape) and type(offset) is int
                 and type(size) is int and 0 <= offset and offset + size <= len(data)
                 and size == int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype])
    except (KeyError, TypeError):
        valid = False
    if not valid:
        raise BundleError(f"weight {position} of the weights index does not fit the weights file ({entry!r:.200}); refused")
    if size == 0:
        return tvm.runtime.empty(tuple(shape), dtype, device)
    raw = data[offset:offset + size]
    if device.dlpack_device_type() == tvm.cpu().dlpack_device_type() and raw.ctypes.data % WEIGHT_ALIGNMENT == 0:
        tensor = tvm.runtime.from_dlpack(raw)
    else:  # another device's memory, or an unaligned member: one copy
        tensor = tvm.runtime.tensor(np.ascontiguousarray(raw), device=device)
    return tensor._create_view(tuple(shape), dtype)


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


def index_problem(checks, reported):
    """What is wrong with one call's indices, in a sentence, or None (kiln/backends/tvm/index_guard.py):
    `checks` are the guarded indices (node, op, source, negative), `reported` the program's last
    output as a list, (smallest, largest, axis size) for each."""
    for position, check in enumerate(checks):
        low, high, size = reported[3 * position: 3 * position + 3]
        first = -size if check["negative"] else 0
        if low < first or high >= size:
            bad = low if low < first else high
            where = f"\n  from the model at:\n{check['source']}" if check["source"] else ""
            return (f"index {bad} is out of range for node '{check['node']}' ({check['op']}): valid indices are "
                    f"{first}..{size - 1}, as in eager PyTorch, which raises here too; this call's outputs are dropped{where}")
    return None


def main(argv):
    main, device, manifest = load_bundle()
    if argv:
        given = np.load(argv[0])
        arrays = [given[spec["name"]] for spec in manifest["inputs"]]
    else:
        rng = np.random.default_rng(0)
        arrays = [
            rng.standard_normal([d if isinstance(d, int) else 1 for d in spec["shape"]]).astype(spec["dtype"])
            for spec in manifest["inputs"]
        ]
    inputs = [tvm.runtime.tensor(a, device=device) for a in arrays]
    outputs = main(*inputs)
    outputs = [outputs] if isinstance(outputs, tvm.runtime.Tensor) else list(outputs)
    checks = manifest.get("index_checks") or []
    if checks:
        problem = index_problem(checks, outputs.pop().numpy().tolist())
        if problem:
            sys.exit(f"run.py: {problem}")
    results = {spec["name"]: out.numpy() for spec, out in zip(manifest["outputs"], outputs)}
    for name, value in results.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
    if len(argv) > 1:
        np.savez(argv[1], **results)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        main(*inputs)
        device.sync()
        times.append(time.perf_counter() - start)
    print(f"latency: {sorted(times)[5] * 1e3:.2f} ms (median of 10) on target {manifest['target']}")


if __name__ == "__main__":
    main(sys.argv[1:])
