"""Targets: preset names users type, resolved to a backend and (for TVM) a target dict.

Presets are data. The host CPU and the GPU's architecture are detected when a target is resolved,
never hard-coded: these machines change CPU between runs (AVX2-only EPYC one day, AVX-512 Xeon
the next). A target whose CPU is not this machine's is cross-compiled with the toolchain its
triple names (`Toolchain`), and runs on the board (see `kiln/backends/tvm/runtime/remote.py`).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from kiln.errors import TargetError

DEFAULT_CUDA_ARCH = "sm_80"  # used where no GPU can be asked; choose with {"kind": "cuda", "arch": ...}


# instruction-set extensions Kiln's kernels use, as LLVM names them -> as Linux's /proc/cpuinfo does
KERNEL_FEATURES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16", "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


def _cpuinfo_flags() -> set[str] | None:
    try:
        return set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return None


def host_features() -> set[str]:
    """KERNEL_FEATURES this machine's CPU has, as the kernel reports them (a VM may hide some its CPU
    model has: AMX needs the kernel's support too), in LLVM's names; LLVM's view where no
    /proc/cpuinfo exists."""
    flags = _cpuinfo_flags()
    if flags is None:
        from tvm.target import Target, codegen

        return set(codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))) & set(KERNEL_FEATURES)
    return {name for name, flag in KERNEL_FEATURES.items() if flag in flags}


def _feature_corrections(mcpu: str) -> list[str]:
    """`mattr` entries that make LLVM's idea of the CPU model agree with the CPU the kernel reports.

    A hypervisor may present a CPU model number LLVM maps to an older core: a Sapphire Rapids-class
    Xeon with AMX and AVX-512 BF16 seen as model 167 is "rocketlake" to LLVM, which has neither; and
    a kernel may withhold features the model has. The model name still picks the scheduling costs."""
    from tvm.target import Target, codegen

    implied = set(codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": mcpu}))) & set(KERNEL_FEATURES)
    present = host_features()
    return [f"+{name}" for name in sorted(present - implied)] + [f"-{name}" for name in sorted(implied - present)]


@dataclass(frozen=True)
class VectorUnit:
    """A CPU's SIMD registers: fp32 lanes of the widest, and how many of them there are (the
    register tile's budget: AVX2 has 16 ymm registers, AVX-512 32 zmm, AArch64 NEON 32)."""

    lanes: int
    registers: int

    @property
    def accumulators(self) -> int:
        """Registers a tile may hold: the rest carry the weight vectors and the broadcast input."""
        return self.registers - 2


def vector_unit_of(llvm_features: Iterable[str], triple: str) -> VectorUnit:
    """The SIMD registers of a CPU with these LLVM features and target triple."""
    features = set(llvm_features)
    if "avx512f" in features:
        return VectorUnit(16, 32)
    if "avx" in features:
        return VectorUnit(8, 16)
    return VectorUnit(4, 32 if triple.startswith("aarch64") else 16)


def host_llvm_target() -> dict[str, Any]:
    """This machine's CPU as a TVM target: LLVM's CPU name, corrected by the features it reports."""
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    corrections = _feature_corrections(mcpu)
    return {"kind": "llvm", "mcpu": mcpu, **({"mattr": corrections} if corrections else {}), "num-cores": os.cpu_count() or 1}


def detected_cuda_arch() -> str | None:
    """`sm_XY` of GPU 0, or None where this machine has no CUDA device."""
    import tvm

    device = tvm.cuda(0)
    return f"sm_{device.compute_version.replace('.', '')}" if device.exist else None


def cuda_target(arch: str | None = None, host: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "cuda", "arch": arch or detected_cuda_arch() or DEFAULT_CUDA_ARCH, "host": host or host_llvm_target()}


@dataclass(frozen=True)
class Toolchain:
    """The C++ cross compiler that links a target's shared library, and the Debian package with it."""

    compiler: str
    package: str

    def installed(self) -> bool:
        return shutil.which(self.compiler) is not None

    def require(self, target_name: str) -> str:
        if not self.installed():
            raise TargetError(
                f"target '{target_name}' links with {self.compiler}, which is not installed: "
                f"apt-get install {self.package}"
            )
        return self.compiler


# by the architecture at the start of an LLVM triple
CROSS_TOOLCHAINS = {
    "aarch64": Toolchain("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "armv7": Toolchain("arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf"),
    "x86_64": Toolchain("x86_64-linux-gnu-g++", "g++-x86-64-linux-gnu"),
}


def _arm(mtriple: str, mcpu: str | None = None, **extra: Any) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        return {"kind": "llvm", "mtriple": mtriple, **({"mcpu": mcpu} if mcpu else {}), **extra}

    return make


@dataclass(frozen=True)
class TargetPreset:
    name: str
    backend: str  # "tvm", "onnxruntime" or "eager"
    description: str
    make_target: Callable[[], dict[str, Any]] = field(default=lambda: {})


TARGETS: dict[str, TargetPreset] = {
    preset.name: preset
    for preset in (
        TargetPreset("llvm", "tvm", "this machine's CPU through TVM/LLVM (CPU name and features detected)", host_llvm_target),
        TargetPreset("cpu", "tvm", "alias of llvm", host_llvm_target),
        TargetPreset("cuda", "tvm", f"NVIDIA GPU (architecture detected; {DEFAULT_CUDA_ARCH} where no GPU is present)", cuda_target),
        TargetPreset("aarch64", "tvm", "generic 64-bit ARMv8 Linux board, NEON", _arm("aarch64-linux-gnu", mattr=["+neon"])),
        TargetPreset("rpi4", "tvm", "Raspberry Pi 4: Cortex-A72, NEON", _arm("aarch64-linux-gnu", "cortex-a72", **{"num-cores": 4})),
        TargetPreset("rpi5", "tvm", "Raspberry Pi 5: Cortex-A76, NEON + dotprod", _arm("aarch64-linux-gnu", "cortex-a76", **{"num-cores": 4})),
        TargetPreset(
            "jetson-orin", "tvm", "NVIDIA Jetson Orin: CUDA sm_87 with a Cortex-A78AE host",
            lambda: cuda_target("sm_87", _arm("aarch64-linux-gnu", "cortex-a78ae")()),
        ),
        TargetPreset(
            "armv7", "tvm", "32-bit ARMv7 Linux board, NEON, hard-float ABI",
            _arm("armv7a-linux-gnueabihf", mattr=["+neon"], **{"mfloat-abi": "hard"}),
        ),
        TargetPreset("onnxruntime", "onnxruntime", "the optimized graph exported to ONNX and run by ONNX Runtime (CUDA provider where present)"),
        TargetPreset("eager", "eager", "the optimized graph run by PyTorch: the numerical reference"),
    )
}


@dataclass(frozen=True)
class ResolvedTarget:
    name: str
    backend: str
    tvm_target: dict[str, Any]

    def describe(self) -> str:
        return f"{self.name} ({self.backend}{': ' + str(self.tvm_target) if self.tvm_target else ''})"

    @property
    def device(self) -> str:
        """Where the kernels run: "cpu" or "cuda"."""
        return "cuda" if self.tvm_target.get("kind") == "cuda" else "cpu"

    @property
    def cpu_target(self) -> dict[str, Any]:
        """The LLVM target of the CPU side (the whole target on CPUs, the host of a GPU)."""
        return self.tvm_target.get("host", {}) if self.device == "cuda" else self.tvm_target

    @property
    def architecture(self) -> str:
        """The CPU architecture the code is for, from the LLVM triple ("x86_64", "aarch64", "armv7")."""
        triple = self.cpu_target.get("mtriple")
        if not triple:
            return platform.machine()
        arch = triple.split("-")[0]
        return "armv7" if arch.startswith("arm") and not arch.startswith("arm64") else arch

    @property
    def cross(self) -> bool:
        """True when the code cannot run on this machine's CPU."""
        return self.backend == "tvm" and self.architecture != platform.machine()

    @functools.cached_property
    def _llvm_features(self) -> frozenset[str]:
        """Every feature LLVM says the target's CPU (its mcpu and mattr) has: asked once per target."""
        if self.backend != "tvm":
            return frozenset()
        from tvm.target import Target, codegen

        return frozenset(codegen.llvm_get_cpu_features(Target(self.cpu_target)))

    @property
    def cpu_features(self) -> list[str]:
        """KERNEL_FEATURES the code may use: those the target's CPU implies."""
        return sorted(self._llvm_features & set(KERNEL_FEATURES))

    @property
    def vector_unit(self) -> VectorUnit:
        """The CPU side's SIMD registers (what register tiles and pruned channel counts keep to)."""
        return vector_unit_of(self._llvm_features, str(self.cpu_target.get("mtriple", "")))

    def missing_cpu_features(self) -> list[str]:
        """Of `cpu_features`, those this machine's CPU lacks (its code would stop on an illegal
        instruction here); none for a board's target, which never runs here."""
        if self.cross or self.backend != "tvm":
            return []
        return sorted(set(self.cpu_features) - host_features())

    @property
    def toolchain(self) -> Toolchain | None:
        """The cross compiler that links this target's library; None for this machine's own CPU."""
        if not self.cross:
            return None
        if self.architecture not in CROSS_TOOLCHAINS:
            raise TargetError(f"target '{self.name}': no known cross toolchain for architecture {self.architecture}")
        return CROSS_TOOLCHAINS[self.architecture]


def resolve_target(target: str | dict[str, Any]) -> ResolvedTarget:
    """A preset name, or a TVM target as a JSON dict (TVM's CLI-style strings are rejected)."""
    if isinstance(target, dict):
        if "kind" not in target:
            raise TargetError(f"a target dict needs a 'kind' (e.g. {{'kind': 'llvm'}}), got {target}")
        raw = dict(target)
        if raw["kind"] == "cuda":
            raw = cuda_target(raw.pop("arch", None), raw.pop("host", None)) | raw
        return ResolvedTarget(raw["kind"], "tvm", raw)
    if not isinstance(target, str) or target not in TARGETS:
        hint = " (targets are preset names or TVM target dicts, not TVM command-line strings)" if isinstance(target, str) and " " in target else ""
        raise TargetError(f"unknown target {target!r}{hint}; presets: {', '.join(TARGETS)}")
    preset = TARGETS[target]
    return ResolvedTarget(preset.name, preset.backend, preset.make_target())
