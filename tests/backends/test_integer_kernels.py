"""Every integer kernel path equals its integer IR exactly, on odd shapes; a path this CPU lacks
is compile-tested: its instruction appears in the generated assembly.

Each path is selected by the target's CPU: vpmaddwd by an AVX2-only CPU (haswell), vpdpbusd by
one with AVX-512 VNNI (the host where it has VNNI, else cascadelake, built but not run here),
ARM sdot by the Raspberry Pi 5's Cortex-A76 (run on the emulated aarch64 board)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from kiln.backends.targets import host_features, resolve_target
from kiln.backends.tvm.cpu.dot_instructions import ARM_SDOT, AVX2_VPMADDWD, AVX512_VNNI, DotInstruction
from tests.conftest import assert_matches

PATHS = {
    AVX512_VNNI.mnemonic: (AVX512_VNNI, "cascadelake"),
    AVX2_VPMADDWD.mnemonic: (AVX2_VPMADDWD, "haswell"),
}


def target_for(dot: DotInstruction, mcpu: str) -> dict:
    """The host where its CPU picks this instruction first, else a CPU that does."""
    host = resolve_target("llvm")
    from kiln.backends.tvm.cpu.dot_instructions import integer_dots

    import tvm

    if integer_dots(tvm.target.Target(host.tvm_target))[:1] == [dot]:
        return host.tvm_target
    return {"kind": "llvm", "mcpu": mcpu, "num-cores": 2}


def assembly(compiled: kiln.CompiledModule) -> str:
    library = compiled._built("assembly").library.mod
    pending, text = [library], []
    while pending:
        module = pending.pop()
        if module.kind == "llvm":
            text.append(module.inspect_source("asm"))
        pending.extend(module.imports)
    return "\n".join(text)


def check(compiled: kiln.CompiledModule, inputs: tuple[torch.Tensor, ...], dot: DotInstruction, board=None) -> None:
    """Equal to the integer IR where this CPU (or the board) runs the code; the instruction in the
    assembly always."""
    assert dot.mnemonic in assembly(compiled), f"no {dot.mnemonic} in the generated code"
    if board is not None:
        compiled = compiled.to_remote(board.address)
    elif compiled.target.missing_cpu_features():
        with pytest.raises(kiln.TargetError, match="lacks"):
            compiled(*inputs)
        return
    with torch.no_grad():
        assert_matches(compiled(*inputs), compiled.graph.run(*inputs)[0], tolerance=1e-6)


# (in, out, kernel, stride, padding, groups, height, width, batch): tails of the instruction's
# lanes and group (out 24 and 40 on 16 lanes, 3 and 6 input channels on groups of 4), strides,
# padding with a non-zero zero point, groups, batch > 1
CONVOLUTIONS = {
    "stem_3_channels_stride2": (3, 32, 3, 2, 1, 1, 19, 17, 2),
    "odd_channels_out40_pad2": (6, 40, 5, 1, 2, 1, 11, 9, 1),
    "pointwise_out48_batch3": (32, 48, 1, 1, 0, 1, 7, 5, 3),
    "grouped": (16, 32, 3, 1, 1, 2, 9, 9, 1),
    "out24_on_16_lanes": (16, 24, 3, 1, 1, 1, 8, 8, 1),
}


def static_int8_convolution(name: str, target) -> tuple[kiln.CompiledModule, torch.Tensor]:
    cin, cout, k, stride, pad, groups, h, w, batch = CONVOLUTIONS[name]
    # a first convolution on signed inputs (zero point ≠ 0, so padding and the correction matter),
    # then one on ReLU outputs (zero point 0)
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, groups=groups), nn.ReLU(), nn.Conv2d(cout, 32, 3, padding=1)).eval()
    x = torch.randn(batch, cin, h, w) + 0.5
    compiled = kiln.compile(model, (x,), target=target, quantize="int8", calibration=[(torch.randn_like(x) + 0.5,) for _ in range(2)])
    return compiled, x


def dynamic_int8_linear(rows: int, inner: int, outer: int, target) -> tuple[kiln.CompiledModule, torch.Tensor]:
    model = nn.Sequential(nn.Linear(inner, outer), nn.GELU(), nn.Linear(outer, 16)).eval()
    x = torch.randn(2, rows, inner)
    return kiln.compile(model, (x,), target=target, quantize="dynamic_int8"), x


LINEARS = [(1, 128, 32), (33, 768, 48), (7, 260, 80)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_static_int8_convolutions(path, name):
    dot, mcpu = PATHS[path]
    compiled, x = static_int8_convolution(name, target_for(dot, mcpu))
    check(compiled, (x,), dot)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rows, inner, outer", LINEARS)
def test_dynamic_int8_linears(path, rows, inner, outer):
    dot, mcpu = PATHS[path]
    compiled, x = dynamic_int8_linear(rows, inner, outer, target_for(dot, mcpu))
    check(compiled, (x,), dot)


@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_arm_dotprod_convolutions_on_the_board(aarch64_board, name):
    """Built for rpi5 (Cortex-A76, dotprod): sdot kernels, run on the emulated aarch64 board
    (qemu-user executes sdot), equal to the integer IR computed here."""
    compiled, x = static_int8_convolution(name, "rpi5")
    check(compiled, (x,), ARM_SDOT, aarch64_board)


@pytest.mark.parametrize("rows, inner, outer", LINEARS)
def test_arm_dotprod_linears_on_the_board(aarch64_board, rows, inner, outer):
    compiled, x = dynamic_int8_linear(rows, inner, outer, "rpi5")
    check(compiled, (x,), ARM_SDOT, aarch64_board)


def test_arm_without_dotprod_keeps_plain_integer_code():
    """rpi4's Cortex-A72 (Armv8.0) has no dotprod: no sdot in its code."""
    compiled, _ = static_int8_convolution("grouped", "rpi4")
    assert "sdot" not in assembly(compiled)


def test_a_module_needing_features_this_cpu_lacks_is_refused_before_it_runs(tmp_path):
    """Built for a CPU with every extension Kiln's kernels use: the features are recorded in the
    artifact, and a machine without one refuses to run it (an illegal instruction otherwise)."""
    model, x = nn.Linear(64, 32).eval(), torch.randn(4, 64)
    compiled = kiln.compile(model, (x,), target={"kind": "llvm", "mcpu": "graniterapids", "num-cores": 2})
    assert {"amx-tile", "avx512vnni", "avx512bf16"} <= set(compiled.target.cpu_features)
    compiled.save(tmp_path / "amx.kiln")
    loaded = kiln.load(tmp_path / "amx.kiln")
    if {"amx-tile", "amx-int8", "amx-bf16"} <= host_features():
        assert_matches(loaded(x), compiled(x))
    else:
        with pytest.raises(kiln.TargetError, match="amx"):
            loaded(x)
