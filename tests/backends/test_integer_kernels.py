"""Every x86 integer kernel path equals its integer IR exactly, on odd shapes; a path this CPU lacks
is compile-tested: its instruction appears in the generated assembly.

Each path is selected by the target's CPU: vpmaddwd by an AVX2-only CPU (haswell), vpdpbusd by
one with AVX-512 VNNI (the host where it has VNNI, else cascadelake, built but not run here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from kiln.backends.targets import host_features, resolve_target
from kiln.backends.tvm.x86_dot import AVX2_VPMADDWD, AVX512_VNNI, DotInstruction
from tests.conftest import assert_matches

PATHS = {
    AVX512_VNNI.mnemonic: (AVX512_VNNI, "cascadelake"),
    AVX2_VPMADDWD.mnemonic: (AVX2_VPMADDWD, "haswell"),
}


def target_for(dot: DotInstruction, mcpu: str) -> dict:
    """The host where its CPU picks this instruction first, else a CPU that does."""
    host = resolve_target("llvm")
    from kiln.backends.tvm.x86_dot import integer_dots

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


def check(compiled: kiln.CompiledModule, inputs: tuple[torch.Tensor, ...], dot: DotInstruction) -> None:
    """Equal to the integer IR where this CPU runs the code; the instruction in the assembly always."""
    assert dot.mnemonic in assembly(compiled), f"no {dot.mnemonic} in the generated code"
    if compiled.target.missing_cpu_features():
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


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_static_int8_convolutions(path, name):
    dot, mcpu = PATHS[path]
    cin, cout, k, stride, pad, groups, h, w, batch = CONVOLUTIONS[name]
    # a first convolution on signed inputs (zero point ≠ 0, so padding and the correction matter),
    # then one on ReLU outputs (zero point 0)
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, groups=groups), nn.ReLU(), nn.Conv2d(cout, 32, 3, padding=1)).eval()
    x = torch.randn(batch, cin, h, w) + 0.5
    compiled = kiln.compile(model, (x,), target=target_for(dot, mcpu), quantize="int8",
                            calibration=[(torch.randn_like(x) + 0.5,) for _ in range(2)])
    check(compiled, (x,), dot)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rows, inner, outer", [(1, 128, 32), (33, 768, 48), (7, 260, 80)])
def test_dynamic_int8_linears(path, rows, inner, outer):
    dot, mcpu = PATHS[path]
    model = nn.Sequential(nn.Linear(inner, outer), nn.GELU(), nn.Linear(outer, 16)).eval()
    x = torch.randn(2, rows, inner)
    compiled = kiln.compile(model, (x,), target=target_for(dot, mcpu), quantize="dynamic_int8")
    check(compiled, (x,), dot)


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
