"""Weights between Relax constants and torch/numpy arrays without needless copies.

`relax.const(numpy_array)` copies into a fresh TVM buffer one page fault at a time (~1 GB/s:
1.6 s of a BERT-base compile) and `Constant.value.numpy()` copies back out. A constant made from
a torch tensor through DLPack shares the tensor's memory; torch's allocations are aligned as TVM
requires, and a numpy result is copied once, by torch, where it is not.
"""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax

from kiln.backends.tvm.runtime.executable import TVM_ALIGNMENT


def constant_tensor(constant: tvm.ir.expr.Constant) -> torch.Tensor:
    """The constant's data as a torch tensor sharing its memory."""
    return torch.from_dlpack(constant.value)


def constant_array(constant: tvm.ir.expr.Constant) -> np.ndarray:
    """The constant's data as a numpy array sharing its memory (bfloat16, which torch cannot hand
    to numpy, copied out as ml_dtypes' type): `.numpy()` of a BERT-base's linear weights took 0.5 s."""
    if constant.value.dtype == "bfloat16":
        return constant.value.numpy()
    return constant_tensor(constant).numpy()


def tensor_constant(tensor: torch.Tensor | np.ndarray) -> tvm.ir.expr.Constant:
    """A Relax constant holding `tensor`'s values (a numpy array's too), sharing its memory when
    it is contiguous and aligned."""
    if isinstance(tensor, np.ndarray):
        if tensor.dtype.name == "bfloat16":  # ml_dtypes: torch reads it as its raw 16 bits
            return relax.const(tensor)
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    tensor = tensor.detach().contiguous()
    if tensor.data_ptr() % TVM_ALIGNMENT:
        tensor = tensor.clone()
    return relax.const(tvm.runtime.from_dlpack(tensor))
