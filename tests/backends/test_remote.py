"""Cross-compiled modules run on an aarch64 board through TVM RPC: here the board is TVM's RPC
server under qemu (the `aarch64_board` fixture), running real aarch64 code."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import TargetError
from kiln.models import EncoderConfig, SmallCNN, TransformerEncoder
from tests.conftest import assert_matches, eager


def test_cnn_compiled_here_runs_on_the_board(aarch64_board):
    model, x = SmallCNN().eval(), torch.randn(2, 3, 32, 32)
    compiled = kiln.compile(model, (x,), target="rpi4", remote=aarch64_board.address)
    assert_matches(compiled(x), eager(model, x))
    remote_row = compiled.report.rows[-1]
    assert remote_row.name == "remote" and remote_row.drift.max_abs < 1e-4
    assert compiled.benchmark(repeat=2) > 0


def test_transformer_encoder_runs_on_the_board(aarch64_board):
    model = TransformerEncoder(EncoderConfig.tiny()).eval()
    tokens = torch.randint(0, EncoderConfig.tiny().vocab, (1, 16))
    compiled = kiln.compile(model, (tokens,), target="rpi4").to_remote(aarch64_board.address)
    assert_matches(compiled(tokens), eager(model, tokens))


def test_saved_board_module_loads_here_and_runs_remotely(aarch64_board, tmp_path):
    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    kiln.compile(model, (x,), target="aarch64").save(tmp_path / "cnn.kiln")
    assert_matches(kiln.load(tmp_path / "cnn.kiln").to_remote(aarch64_board.address)(x), eager(model, x))


@pytest.mark.parametrize("target", ["llvm", "armv7"])
def test_board_refuses_a_module_for_another_architecture(aarch64_board, target):
    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    compiled = kiln.compile(model, (x,), target=target)
    with pytest.raises(TargetError, match=f"board at {aarch64_board.address} refused this module, built for target '{target}'"):
        compiled.to_remote(aarch64_board.address)


def test_exported_bundle_runs_on_the_board_with_only_the_tvm_runtime(aarch64_board, tmp_path):
    from kiln.backends.tvm.runtime.emulated_board import prepare

    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    bundle = kiln.compile(model, (x,), target="rpi4").export(tmp_path / "bundle")
    np.savez(tmp_path / "inputs.npz", x=x.numpy())
    board = prepare()
    result = subprocess.run(
        [str(board / "python"), str(bundle / "run.py"), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, env={"PYTHONPATH": str(board / "site-packages"), "TVM_USE_RUNTIME_LIB": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "latency:" in result.stdout
    outputs = np.load(tmp_path / "out.npz")
    assert_matches(torch.from_numpy(outputs[list(outputs.keys())[0]]), eager(model, x))


def test_unreachable_board_is_a_clear_error():
    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    with pytest.raises(TargetError, match="no TVM RPC server answers at 127.0.0.1:9"):
        kiln.compile(model, (x,), target="rpi4", remote="127.0.0.1:9")


@pytest.mark.slow  # ~2.5 min of tuning on two emulated boards: `./run test -m slow`
def test_tuning_on_boards_through_a_tracker_is_used_by_a_recompile(aarch64_tracker, tmp_path):
    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    summary = kiln.tune(
        model, (x,), trials=3, target="rpi4", tracker=aarch64_tracker.address, key="rpi4", tuning_dir=tmp_path,
        progress=lambda _: None,
    )
    assert summary.database.name.startswith("llvm-cortex-a72-")  # rpi4's own database, not this CPU's
    assert all(task.best_seconds <= task.default_seconds for task in summary.tasks)
    compiled = kiln.compile(model, (x,), target="rpi4", tuning_dir=tmp_path)
    applied = [row for row in compiled.report.rows if row.name == "ApplyTuningDatabase"]
    assert applied and f"({len(summary.tasks)} scheduled)" in applied[0].note
    host = kiln.compile(model, (x,), target="llvm", tuning_dir=tmp_path)
    not_applied = [row for row in host.report.rows if row.name == "ApplyTuningDatabase"]
    assert not_applied and "not used" in not_applied[0].note


def test_a_stopped_board_leaves_no_process_behind():
    """The RPC server runs each session in popen workers of its own: stopping the board ends
    them too (they had outlived it, one emulated Python per board test)."""
    import os

    from kiln.backends.tvm.runtime.emulated_board import BoardUnavailable, live_process_group, start_server

    try:
        board = start_server()
    except BoardUnavailable as error:
        pytest.skip(f"no emulated aarch64 board: {error}")
    try:
        model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
        kiln.compile(model, (x,), target="rpi4", remote=board.address)(x)
        groups = {process.pid for process in board.processes}
        in_groups = lambda: [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if live_process_group(pid) in groups]
        assert len(in_groups()) > len(groups)  # the session's worker is there while the board runs
    finally:
        board.stop()
    assert in_groups() == []


