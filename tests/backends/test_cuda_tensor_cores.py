"""CUDA builds on the tensor cores, checked without a GPU: the CUDA C that TVM generated for fp16
and int8 builds (what nvcc compiled) has `wmma::mma_sync` in the kernel of every convolution and
matmul that is a GEMM, nvcc fits those kernels in the registers of sm_80 and sm_90 without spills,
and fp16 kernels of small layers run in tiles smaller than DLight's.
Numbers and speed on a GPU: benchmarks/gpu.py."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pytest
import torch
import tvm
from tvm import relax

import kiln
import kiln.backends.tvm as tvm_backend
from kiln import models
from kiln.backends.tvm.cuda.int8_operands import signed_int8_operands
from kiln.backends.tvm.cuda.gemm_tile import CANDIDATES, DLIGHT_TILE
from kiln.backends.tvm.cuda.tensor_core import FRAGMENT
from kiln.backends.tvm.converters.quantized import is_call
from kiln.ir.stats import op_name

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="building CUDA modules needs nvcc (the CUDA toolkit)")

_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^;{]*\)\s*\{')


def _bert_like():
    torch.manual_seed(0)
    return models.TransformerEncoder(models.EncoderConfig(layers=1, vocab=1000)).eval(), (torch.randint(0, 1000, (1, 128)),)


MODELS = {"resnet18": lambda: models.ZOO["resnet18"](), "mobilenet_v2": lambda: models.ZOO["mobilenet_v2"](), "bert_like": _bert_like}


def kernel_bodies(source: str) -> dict[str, str]:
    """Each `__global__` kernel's definition in generated CUDA C, by name."""
    bodies = {}
    for chunk in re.split(r'(?=extern "C" __global__)', source):
        found = _KERNEL.match(chunk)
        if found:
            bodies[found.group(1)] = chunk
    return bodies


def _is_gemm(node) -> bool:
    """A convolution that mixes channels (not depthwise) or a matmul with M, N, K ≥ 16: a GEMM."""
    name = op_name(node)
    if name in ("aten.conv2d", "kiln.qconv2d"):  # (x, weight | zero point, weight, stride, padding, dilation, groups)
        groups = node.args[6] if len(node.args) > 6 else 1
        return groups == 1
    if name in ("aten.linear", "kiln.qlinear", "aten.matmul", "aten.bmm", "aten.mm"):
        x, w = (node.args[i].meta["val"].shape for i in ((0, 2) if name == "kiln.qlinear" else (0, 1)))
        linear = name in ("aten.linear", "kiln.qlinear")
        rows, columns = (math.prod(x[:-1]), w[0]) if linear else (x[-2], w[-1])
        return min(rows, columns, x[-1]) >= FRAGMENT
    return False


@pytest.fixture(scope="module", params=[(name, "fp16") for name in MODELS] + [("resnet18", "int8")], ids="-".join)
def cuda_build(request):
    name, quantize = request.param
    model, inputs = MODELS[name]()
    calibration = [inputs] if quantize == "int8" else None
    return name, kiln.compile(model, inputs, target="cuda", quantize=quantize, calibration=calibration, cache=False)


def test_every_convolution_and_matmul_kernel_runs_on_tensor_cores(cuda_build):
    name, compiled = cuda_build
    gemms = {node.name for node in compiled.graph.nodes if node.op == "call_function" and _is_gemm(node)}
    bodies = kernel_bodies(compiled.executable.device_source())
    # the kernels that hold a convolution or matmul (TVM names a fused function after its ops)
    # and compute one of those GEMM nodes (the elementwise kernels around them name them too)
    checked = {function: [kernel for kernel in bodies if kernel.startswith(f"{function}_kernel")]
               for function, info in compiled.executable.kernel_info.items()
               if re.search("conv2d|matmul", function) and gemms & set(info["sources"])}
    assert len(checked) >= {"resnet18": 15, "mobilenet_v2": 20, "bert_like": 4}[name], sorted(checked)
    assert all(checked.values()), [function for function, kernels in checked.items() if not kernels]
    on_cuda_cores = [kernel for kernels in checked.values() for kernel in kernels if "wmma::mma_sync" not in bodies[kernel]]
    assert not on_cuda_cores


def test_tensor_core_kernels_fit_the_registers_of_sm80_and_sm90(cuda_build, tmp_path):
    _, compiled = cuda_build
    source = tmp_path / "kernels.cu"
    source.write_text(compiled.executable.device_source())
    tensor_core_kernels = {name for name, body in kernel_bodies(source.read_text()).items() if "wmma::mma_sync" in body}
    for arch in ("sm_80", "sm_90"):
        usage = subprocess.run(["nvcc", "--cubin", f"-arch={arch}", "--resource-usage", "-o", str(tmp_path / f"{arch}.cubin"),
                                str(source)], capture_output=True, text=True, check=True).stderr
        # ptxas: "Compiling entry function 'NAME' ...", then "... N bytes spill stores ..." and "Used R registers"
        entries = dict(re.findall(r"Compiling entry function '(\w+)'.*?(Used \d+ registers[^\n]*)", usage, re.S))
        spills = dict(re.findall(r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores", usage, re.S))
        for kernel in tensor_core_kernels:
            registers = int(re.search(r"Used (\d+) registers", entries[kernel]).group(1))
            assert registers <= 255 and int(spills[kernel]) == 0, (arch, kernel, entries[kernel])


def test_kernels_use_tiles_sized_to_their_layers(cuda_build):
    # gemm_tile.py: batch-1 layers smaller than DLight's 128 × 128 (512 threads) get smaller tiles;
    # every tensor-core kernel has 32 threads per warp of a candidate tile
    name, compiled = cuda_build
    source = compiled.executable.device_source()
    threads = {int(re.search(r"__launch_bounds__\((\d+)\)", body).group(1))
               for body in kernel_bodies(source).values() if "wmma::mma_sync" in body}
    assert threads <= {32 * tile.warps for tile in CANDIDATES} and min(threads) < 32 * DLIGHT_TILE.warps, (name, threads)


@pytest.mark.parametrize("quantize", ["fp16", "int8"])
@pytest.mark.parametrize("target", ["cuda", "jetson-orin"])
def test_half_and_int8_builds_succeed_for_a_gpu_and_an_orin_board(target, quantize, tmp_path):
    model, inputs = models.ZOO["cnn_batch_norm"]()
    compiled = kiln.compile(model, inputs, target=target, quantize=quantize,
                            calibration=[inputs] if quantize == "int8" else None, debug_dir=tmp_path)
    assert "cuda" in compiled.executable.module_kinds()
    bodies = kernel_bodies(compiled.executable.device_source())
    convolutions = [body for name, body in bodies.items() if "conv2d" in name]
    # both are GEMMs of 16 or more (3·3·3 and 16 channels in, 16 and 32 out): on the tensor cores,
    # int8 ones as int8 × int8 (kiln/backends/tvm/cuda/int8_operands.py)
    assert len(convolutions) == 2 and all("wmma::mma_sync" in body for body in convolutions)
    # each named by its tile in the scheduled IR (and so in `cm.profile()`)
    scheduled = next(tmp_path.glob("*_tvm_ScheduleGPU.py")).read_text()
    tiles = re.findall(r'"kiln.strategy": "(wmma_gemm_\d+x\d+)"', scheduled)
    assert len(tiles) == 2 and set(tiles) <= {f"wmma_gemm_{tile.describe()}" for tile in CANDIDATES}, tiles
    if quantize == "int8":
        assert all("wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, signed char" in body for body in convolutions)


def test_int8_layers_as_signed_int8_operands_compute_the_same_integers(monkeypatch):
    """The rewrite that puts int8 layers on the tensor cores is exact: applied on this CPU, the
    int8 CNN's convolutions and matmul then read int8 activations, and its outputs equal the
    unrewritten build's."""
    model, inputs = models.ZOO["cnn_batch_norm"]()
    plain = kiln.compile(model, inputs, quantize="int8", calibration=[inputs], cache=False)
    rewritten: list[tvm.IRModule] = []

    def recorded():
        rewrite = signed_int8_operands()
        return lambda mod: rewritten.append(rewrite(mod)) or rewritten[-1]

    fusion = tvm_backend.fusion_passes
    monkeypatch.setattr(tvm_backend, "fusion_passes", lambda target: [("SignedInt8Operands", recorded)] + fusion(target))
    shifted = kiln.compile(model, inputs, quantize="int8", calibration=[inputs], cache=False)
    layers = []
    relax.analysis.post_order_visit(rewritten[0]["main"].body, lambda e: layers.append(e) if is_call(e, "relax.nn.conv2d")
                                    or is_call(e, "relax.matmul") else None)
    assert len(layers) == 3 and all(layer.args[0].ty.dtype == "int8" for layer in layers)
    assert torch.equal(shifted(*inputs), plain(*inputs))
