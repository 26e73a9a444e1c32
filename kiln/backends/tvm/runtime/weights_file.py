"""A module's weights as one file beside its library: every tensor's raw bytes at an aligned
offset (`stem`.bin) and their dtypes and shapes (`stem`.json). The board's runner reads them with
numpy alone (bundle_runner.read_weights); Kiln writes them here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import tvm

from kiln.backends.tvm.runtime.bundle_runner import WEIGHT_ALIGNMENT, WEIGHTS_STEM, weight_files


def write_weights(folder: Path, weights: Sequence[tvm.runtime.Tensor], stem: str = WEIGHTS_STEM) -> None:
    """`stem`.bin and its index `stem`.json in `folder`, in parameter order: each tensor's raw
    bytes at an aligned offset, its dtype and shape in the index."""
    entries, offset = [], 0
    data_name, index_name = weight_files(stem)
    with (folder / data_name).open("wb") as file:
        for weight in weights:
            data = _raw_bytes(weight)
            padding = -offset % WEIGHT_ALIGNMENT
            file.write(b"\0" * padding)
            offset += padding
            entries.append({"dtype": str(weight.dtype), "shape": [int(d) for d in weight.shape], "offset": offset,
                            "bytes": data.nbytes})
            file.write(memoryview(data))
            offset += data.nbytes
    (folder / index_name).write_text(json.dumps({"bytes": offset, "tensors": entries}))


def _raw_bytes(weight: tvm.runtime.Tensor):
    """The tensor's bytes as a numpy uint8 array, without a copy for a CPU tensor (bfloat16, which
    numpy lacks, included)."""
    if weight.device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
        weight = weight.copyto(tvm.cpu())
    return torch.from_dlpack(weight).reshape(-1).view(torch.uint8).numpy()
