"""Shared test helpers. Tolerance for fp32 compiled-vs-eager: max |Δ| ≤ 1e-4 × max |eager|."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree

FP32_TOLERANCE = 1e-4


def assert_matches(got, expected, tolerance: float = FP32_TOLERANCE) -> None:
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(expected)
    assert got_spec == want_spec, f"output structure {got_spec} != {want_spec}"
    for a, b in zip(got_leaves, want_leaves):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        scale = max(b.abs().max().item(), 1e-12)
        error = (a.detach() - b.detach()).abs().max().item()
        assert error <= tolerance * scale, f"max |Δ| {error:.3e} > {tolerance} × output scale {scale:.3e}"


def eager(model: torch.nn.Module, *inputs, **kwargs):
    with torch.no_grad():
        return model.eval()(*inputs, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def hermetic_tuning_database(tmp_path_factory):
    """Tests never pick up tuning records the machine's user has (compile uses them by default)."""
    os.environ["KILN_TUNING_DIR"] = str(tmp_path_factory.mktemp("tuning-database"))


@pytest.fixture(autouse=True, scope="session")
def hermetic_compile_cache(tmp_path_factory):
    """Every test builds what it compiles (the cache's own tests turn it on, in a folder of their
    own): a test that inspects a build's graph or rows must see that build, not a loaded one."""
    os.environ["KILN_CACHE_DIR"] = str(tmp_path_factory.mktemp("compile-cache"))
    os.environ["KILN_CACHE"] = "off"


@pytest.fixture(autouse=True)
def seeded_random_numbers():
    """Each test draws the same inputs whatever ran before it, so a failure reproduces alone."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def aarch64_board():
    """An aarch64 TVM RPC server under qemu on this machine (kiln/backends/tvm/runtime/emulated_board.py);
    skipped, with the reason, where it cannot be set up."""
    from kiln.backends.tvm.runtime.emulated_board import BoardUnavailable, start_server

    try:
        board = start_server()
    except BoardUnavailable as error:
        pytest.skip(f"no emulated aarch64 board: {error}")
    yield board
    board.stop()


@pytest.fixture(scope="session")
def aarch64_tracker():
    """TVM's RPC tracker with two emulated aarch64 servers registered under the key 'rpi4'."""
    from kiln.backends.tvm.runtime.emulated_board import BoardUnavailable, start_tracker_with_servers

    try:
        board = start_tracker_with_servers(2, "rpi4")
    except BoardUnavailable as error:
        pytest.skip(f"no emulated aarch64 boards: {error}")
    yield board
    board.stop()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A folder outside what a hostile file names, and a private temporary directory for Kiln's
    unpacking: after each hostile input both must look exactly as before."""
    sandbox, temporary = tmp_path / "sandbox", tmp_path / "tmp"
    sandbox.mkdir(), temporary.mkdir()
    (sandbox / "keep.txt").write_text("untouched")
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    before = tree(sandbox)
    yield sandbox
    assert tree(sandbox) == before, "a hostile input wrote outside its folder"
    assert tree(temporary) == set(), "a hostile input left temporary files behind"
