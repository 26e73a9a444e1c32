"""A built Relax module on the Relax VM: torch tensors in and out through DLPack (no copies)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import tvm
from tvm import relax

from kiln.backends.tvm.threads import pool_size, use_threads

LIBRARY_FILE = "module.so"


class TVMExecutable:
    def __init__(self, library: tvm.runtime.Module, device: tvm.runtime.Device, threads: int | None = None) -> None:
        self.library = library
        self.device = device
        self.threads = threads
        self.vm = relax.VirtualMachine(library, device)
        self._main = self.vm["main"]
        self._on_cpu = device.dlpack_device_type() == tvm.runtime.cpu().dlpack_device_type()
        self._thread_count = threads or pool_size()

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._on_cpu:
            use_threads(self._thread_count)
        args = [tvm.runtime.from_dlpack(t.detach().contiguous()) for t in inputs]
        result = self._main(*args)
        flat = list(result) if not isinstance(result, tvm.runtime.Tensor) else [result]
        return [torch.from_dlpack(t) for t in flat]

    def save(self, folder: Path) -> None:
        self.library.export_library(str(folder / LIBRARY_FILE))

    @classmethod
    def load(cls, folder: Path, device: tvm.runtime.Device, threads: int | None) -> "TVMExecutable":
        return cls(tvm.runtime.load_module(str(folder / LIBRARY_FILE)), device, threads)
