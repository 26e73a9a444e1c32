"""Save → load in a fresh process → same outputs; damaged artifacts give a clear error."""

import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

import kiln
from kiln import models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifact")
    model, x = models.SmallCNN().eval(), torch.randn(2, 3, 32, 32)
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


def test_weights_are_kept_apart_from_the_program_and_mapped_in_place(saved, tmp_path):
    """The library holds code alone: the weights are `main`'s trailing parameters, stored beside
    it; an uncompressed (local) artifact has them at an aligned offset, so loading maps them."""
    folder, path = saved
    module = kiln.load(path)
    first_weight = max(module.executable.weights, key=lambda w: w.numpy().nbytes).numpy().tobytes()[:256]
    with zipfile.ZipFile(path) as archive:
        assert first_weight not in archive.read("files/module.so")
        assert first_weight in archive.read("files/weights.bin")
    module.save(tmp_path / "local.kiln", local=True)
    with zipfile.ZipFile(tmp_path / "local.kiln") as archive:
        info = archive.getinfo("files/weights.bin")
    raw = (tmp_path / "local.kiln").read_bytes()
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0
    io = torch.load(folder / "io.pt")
    assert torch.equal(kiln.load(tmp_path / "local.kiln")(io["x"]), io["y"])


def test_a_loaded_module_exports_a_bundle_that_runs(saved, tmp_path):
    folder, path = saved
    bundle = kiln.load(path).export(tmp_path / "bundle")
    io = torch.load(folder / "io.pt")
    np.savez(tmp_path / "in.npz", **{"x": io["x"].numpy()})
    result = subprocess.run([sys.executable, str(bundle / "run.py"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (output,) = np.load(tmp_path / "out.npz").values()
    assert torch.equal(torch.from_numpy(output), io["y"])


def test_loading_prints_nothing(saved, capfd):
    """TVM logs a line per storage scope when a VM program is read: Kiln drops them."""
    kiln.load(saved[1])
    assert capfd.readouterr().err == ""


def test_eager_target_round_trip(tmp_path):
    model, x = models.MLP().eval(), torch.randn(3, 64)
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
