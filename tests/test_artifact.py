"""Save → load in a fresh process → same outputs; damaged artifacts give a clear error."""

import subprocess
import sys
import textwrap

import pytest
import torch

import kiln
from kiln import models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifact")
    model, x = models.SmallCNN(), torch.randn(2, 3, 32, 32)
    compiled = kiln.compile(model, (x,), dynamic_batch=True)
    path = folder / "cnn.kiln"
    compiled.save(path)
    torch.save({"x": x, "y": compiled(x)}, folder / "io.pt")
    return folder, path


def test_load_in_a_new_process_gives_same_outputs(saved):
    folder, path = saved
    script = textwrap.dedent(f"""
        import torch, kiln
        io = torch.load({str(folder / 'io.pt')!r})
        module = kiln.load({str(path)!r})
        assert torch.equal(module(io["x"]), io["y"]), "outputs differ after reload"
        assert module(io["x"][:1]).shape == (1, 10)  # dynamic batch survives the round trip
        assert any(row.name == "fold_batch_norm" for row in module.report.rows)
        print("reloaded ok")
    """)
    # no model class is imported in the new process: only kiln and the artifact
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reloaded ok" in result.stdout


def test_eager_target_round_trip(tmp_path):
    model, x = models.MLP(), torch.randn(3, 64)
    compiled = kiln.compile(model, (x,), target="eager")
    compiled.save(tmp_path / "mlp.kiln")
    assert torch.equal(kiln.load(tmp_path / "mlp.kiln")(x), compiled(x))


def test_truncated_artifact(saved, tmp_path):
    _, path = saved
    damaged = tmp_path / "truncated.kiln"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(kiln.ArtifactError, match="truncated"):
        kiln.load(damaged)


def test_corrupt_artifact(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    # flip bytes inside the stored library, leaving the zip structure readable
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("files/module.so")
    start = info.header_offset + 30 + len(info.filename) + 100
    for i in range(start, start + 64):
        data[i] ^= 0xFF
    damaged = tmp_path / "corrupt.kiln"
    damaged.write_bytes(bytes(data))
    with pytest.raises(kiln.ArtifactError, match="corrupt"):
        kiln.load(damaged)


def test_not_an_artifact(tmp_path):
    path = tmp_path / "notes.kiln"
    path.write_text("hello")
    with pytest.raises(kiln.ArtifactError, match="truncated or not a zip"):
        kiln.load(path)
    with pytest.raises(kiln.ArtifactError, match="no such Kiln artifact"):
        kiln.load(tmp_path / "missing.kiln")
