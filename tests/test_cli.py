import subprocess
import sys

from kiln.cli import main


def test_passes_lists_every_registered_pass_and_pipelines(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("dce", "cse", "fold_constants", "fold_batch_norm", "remove_noops", "merge_parallel_linear"):
        assert name in out
    assert "O3: remove_noops" in out


def test_targets_lists_presets_with_detected_cpu(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "llvm" in out and "eager" in out and "'mcpu':" in out


def test_demo_prints_report_and_speed():
    result = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "demo", "--model", "cnn", "--repeats", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fold_batch_norm" in result.stdout and "FuseTIR" in result.stdout
    assert "PyTorch eager" in result.stdout and "x eager)" in result.stdout


def test_compile_prunes_and_the_artifact_loads(tmp_path, capsys):
    import torch

    import kiln

    output = tmp_path / "cnn.kiln"
    assert main(["compile", "cnn", "-o", str(output), "--prune", "0.5", "--low-rank", "0.9", "--target", "eager"]) == 0
    printed = capsys.readouterr().out
    assert "prune_channels" in printed and "low_rank" in printed and "per layer" in printed
    assert kiln.load(output)(torch.randn(1, 3, 32, 32)).shape == (1, 10)
