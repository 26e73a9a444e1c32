"""Target presets: each builds (ARM presets to ARM libraries, CUDA ones to CUDA code), a missing
cross toolchain names its Debian package, a CUDA module without a GPU says so."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

import kiln
from kiln.backends.targets import TARGETS, Toolchain, resolve_target
from kiln.errors import TargetError
from kiln.models import SmallCNN
from tests.conftest import assert_matches, eager

PRESETS = [name for name, preset in TARGETS.items() if preset.backend == "tvm"]
FILE_SAYS = {"x86_64": "x86-64", "aarch64": "ARM aarch64", "armv7": "32-bit LSB shared object, ARM, EABI5"}


@pytest.fixture(scope="module")
def cnn():
    return SmallCNN().eval(), torch.randn(1, 3, 32, 32)


def test_every_preset_is_listed_by_the_cli(capsys):
    from kiln.cli import main

    assert main(["targets"]) == 0
    listed = capsys.readouterr().out
    for name in ("llvm", "cpu", "cuda", "aarch64", "rpi4", "rpi5", "jetson-orin", "armv7"):
        assert name in listed
    assert "cross toolchain: aarch64-linux-gnu-g++" in listed and "arm-linux-gnueabihf-g++" in listed


def test_host_preset_detects_this_cpu():
    from tvm.target import codegen

    assert resolve_target("llvm").tvm_target["mcpu"] == codegen.llvm_get_system_cpu()
    assert not resolve_target("llvm").cross and resolve_target("rpi4").cross


def test_cuda_architecture_can_be_chosen():
    target = resolve_target({"kind": "cuda", "arch": "sm_90"})
    assert target.tvm_target["arch"] == "sm_90" and target.tvm_target["host"]["kind"] == "llvm"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds(preset, cnn, tmp_path):
    target = resolve_target(preset)
    if target.toolchain is not None and not target.toolchain.installed():
        pytest.skip(f"{target.toolchain.compiler} not installed (apt-get install {target.toolchain.package})")
    if target.device == "cuda" and shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: CUDA code cannot be built here")
    model, x = cnn
    compiled = kiln.compile(model, (x,), target=preset)
    if target.device == "cuda":
        assert "cuda" in compiled.executable.module_kinds()
    bundle = compiled.export(tmp_path / "bundle")
    described = subprocess.run(["file", "-L", str(bundle / "module.so")], capture_output=True, text=True).stdout
    assert FILE_SAYS[target.architecture] in described, described
    if preset == "armv7":
        attributes = subprocess.run(["readelf", "-A", str(bundle / "module.so")], capture_output=True, text=True).stdout
        assert "Tag_ABI_VFP_args: VFP registers" in attributes  # hard-float calling convention
    if not target.cross and target.device == "cpu":
        assert_matches(compiled(x), eager(model, x))


def test_missing_cross_toolchain_names_the_debian_package(cnn, monkeypatch):
    monkeypatch.setattr(Toolchain, "installed", lambda self: False)
    model, x = cnn
    with pytest.raises(TargetError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        kiln.compile(model, (x,), target="rpi4")


def test_board_module_refuses_to_run_here_and_says_where_it_runs(cnn, tmp_path):
    model, x = cnn
    compiled = kiln.compile(model, (x,), target="rpi4")
    compiled.save(tmp_path / "cnn.kiln")
    for module in (compiled, kiln.load(tmp_path / "cnn.kiln")):
        with pytest.raises(TargetError, match="built for target 'rpi4' \\(aarch64\\).*to_remote"):
            module(x)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: CUDA code cannot be built here")
def test_cuda_module_saved_here_loads_and_runs_or_reports_no_device(cnn, tmp_path):
    import tvm

    model, x = cnn
    kiln.compile(model, (x,), target="cuda").save(tmp_path / "cnn_cuda.kiln")
    loaded = kiln.load(tmp_path / "cnn_cuda.kiln")
    if tvm.cuda(0).exist:
        assert_matches(loaded(x.cuda()), eager(model.cuda(), x.cuda()))
    else:
        with pytest.raises(TargetError, match="no CUDA device"):
            loaded(x)
