"""CompiledModule: what `kiln.compile` returns and `kiln.load` restores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from kiln import artifact
from kiln.backends import Executable, ResolvedTarget, get_backend
from kiln.errors import ArtifactError, BackendError, KilnError, TargetError
from kiln.ir.graph import Graph
from kiln.report.records import Report
from kiln.signature import Signature
from kiln.version import __version__

if TYPE_CHECKING:
    from kiln.backends.tvm.runtime.profile import Profile


class CompiledModule:
    """Call it like the original model: torch tensors (or numpy arrays) in, torch tensors out."""

    def __init__(
        self,
        executable: Executable,
        signature: Signature,
        target: ResolvedTarget,
        report: Report,
        threads: int | None = None,
        graph: Graph | None = None,
    ) -> None:
        self.executable = executable
        self._graph: Graph | Callable[[], Graph] | None = graph
        self.threads = threads
        self.signature = signature
        self.target = target
        self.report = report

    @property
    def graph(self) -> Graph | None:
        """The optimized Kiln graph, in the compiling process (None for a module `kiln.load` read).
        A build the compile cache served derives it on first use, as its compile would have."""
        if callable(self._graph):
            self._graph = self._graph()
        return self._graph

    def defer_graph(self, derive: Callable[[], Graph]) -> None:
        """`graph` is `derive()`, computed when first read (a build from the compile cache)."""
        self._graph = derive

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inputs = self.signature.flatten(args, kwargs)
        try:
            outputs = self.executable(inputs)
        except KilnError:
            raise
        except Exception as error:  # ONNX Runtime's, PyTorch's (the eager backend's), TVM's own run-time checks
            raise BackendError(f"running the compiled module ({self.target.name}) failed: {type(error).__name__}: "
                               f"{str(error).strip()[:2000]}", stage="run") from error
        return self.signature.unflatten(outputs, inputs)

    def to_remote(self, address: str) -> "CompiledModule":
        """This module, uploaded to the board whose TVM RPC server listens at `address`
        ("host:port") and run there: torch tensors in, torch tensors out."""
        from kiln.backends.tvm.runtime.remote import RemoteExecutable

        remote = RemoteExecutable(self._built("to_remote"), address)
        return CompiledModule(remote, self.signature, self.target, self.report, self.threads, self.graph)

    def export(self, folder: str | Path) -> Path:
        """A deployable folder: the shared library, its weights beside it, a manifest of inputs, outputs
        and target, and a runner that needs only TVM's runtime on the board."""
        from kiln.backends.tvm.runtime.bundle import export_bundle

        return export_bundle(self._built("export"), self.signature, Path(folder))

    def export_onnx(self, path: str | Path) -> Path:
        """The optimized graph (after Kiln's passes) as an ONNX file, e.g. for Netron."""
        from kiln.ir.onnx.export import save_onnx

        if self.graph is None:
            raise TargetError("export_onnx needs the graph, which a loaded .kiln artifact does not keep: compile again")
        return save_onnx(self.graph, path)

    def benchmark(self, *args: Any, repeat: int = 10, **kwargs: Any) -> float:
        """Median latency in milliseconds where the module runs (on the board for a remote one);
        example inputs from the signature when none are given."""
        inputs: Sequence[Any] = self.signature.flatten(args, kwargs) if args or kwargs else [s.example() for s in self.signature.inputs]
        return self.executable.median_seconds(inputs, repeat) * 1e3

    def profile(self, *args: Any, runs: int = 10, **kwargs: Any) -> "Profile":
        """Where the time goes, kernel by kernel (kiln.backends.tvm.runtime.profile.py): each kernel's calls,
        median time per run and share, its FLOPs and GFLOP/s, the dot-product instructions its
        code uses, beside the module's own latency. Example inputs from the signature when none
        are given. `print(cm.profile().table())` for the text form."""
        inputs = self.signature.flatten(args, kwargs) if args or kwargs else [s.example() for s in self.signature.inputs]
        return self.executable_profile(inputs, runs)

    def executable_profile(self, inputs: Sequence[torch.Tensor], runs: int = 10) -> "Profile":
        """`profile` on flat input tensors."""
        from kiln.backends.tvm.runtime.profile import profile_executable

        if self.target.backend != "tvm":
            raise TargetError(f"profile() times TVM kernels; this module's target is '{self.target.name}'")
        return profile_executable(self.executable, inputs, runs)

    def _built(self, action: str):
        if self.target.backend != "tvm":
            raise TargetError(f"{action} needs a TVM target; this module's target is '{self.target.name}'")
        return self.executable.built

    def save(self, path: str | Path, sign_with: Any = None, extra: dict[str, Any] | None = None, local: bool = False) -> None:
        """Write the `.kiln` artifact; `sign_with` (an Ed25519 private key or its PEM file, from
        `kiln keygen`) signs it, so a loader can ask for `trusted_keys`. `extra` adds manifest
        fields (the compile cache's key), which `load(..., expect=...)` can require. `local=True` (the
        compile cache) stores the files uncompressed: seconds faster to write, and the weights are
        mapped straight from the artifact when it is loaded."""
        manifest = {
            **(extra or {}),
            **artifact_header(self.target, self.threads),
            "signature": self.signature.to_json(),
            "report": self.report.to_json(),
        }
        artifact.write_artifact(path, manifest, self.executable.save, sign_with, compress=not local)

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.signature.inputs)
        return f"<kiln.CompiledModule {self.target.name} ({ins})>"


def artifact_header(target: ResolvedTarget, threads: int | None) -> dict[str, Any]:
    """The manifest fields every `.kiln` artifact has: who built it, for which target and threads."""
    return {
        "built_by": _builder(),
        "backend": target.backend,
        # the instruction-set extensions its kernels may use: a CPU without one is refused before it runs
        "target": {"name": target.name, "tvm": target.tvm_target, "cpu_features": target.cpu_features},
        "threads": threads,
    }


def _builder() -> dict[str, str]:
    """Who built an artifact: the versions that made it and the machine, for `kiln info`."""
    import platform
    import sys

    versions = {"kiln": __version__, "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine()}
    if "tvm" in sys.modules:
        versions["tvm"] = sys.modules["tvm"].__version__
    return versions


MAPPED_FILES = ("weights.bin",)  # mapped from an uncompressed artifact, not unpacked (kiln/backends/tvm/weights.py)


def restore(manifest: dict[str, Any], folder: Path, mapped: dict[str, Any]) -> CompiledModule:
    """The module an unpacked, verified `.kiln` artifact holds (kiln/artifact.py read it)."""
    target = ResolvedTarget(manifest["target"]["name"], manifest["backend"], manifest["target"]["tvm"])
    threads = manifest.get("threads")
    executable = get_backend(manifest["backend"]).load(folder, target, threads, mapped)
    report = Report.from_json(manifest["report"])
    return CompiledModule(executable, Signature.from_json(manifest["signature"]), target, report, threads)


def load_module(path: str | Path, expect: dict[str, Any]) -> CompiledModule:
    """A module artifact whose manifest has the fields `expect` gives, with their values, before
    its library is loaded: the compile cache's entries (`kiln.load` reads any artifact)."""

    def restore_expected(manifest: dict[str, Any], folder: Path, mapped: dict[str, Any]) -> CompiledModule:
        for field, value in expect.items():
            if manifest.get(field) != value:
                raise ArtifactError(f"{path}: its manifest's {field} is {manifest.get(field)!r}, not {value!r}")
        return restore(manifest, folder, mapped)

    return artifact.read_artifact(path, restore_expected, map_members=MAPPED_FILES)
