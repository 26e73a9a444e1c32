"""Hostile files other than artifacts: ONNX models whose external data points elsewhere, tuning
databases that are not what TVM wrote, board bundles whose library was swapped, RPC servers on
public addresses, and the artifact commands of the CLI."""

import hashlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln import cli, models
from kiln.backends.tvm.runtime import bundle_runner
from kiln.backends.tvm.runtime.remote import OpenRPCAddressWarning, warn_if_public
from kiln.backends.tvm.tuning.database import RECORDS_FILE, WORKLOADS_FILE, TuningDatabase


def model_with_external_weight(folder: Path, location: str) -> Path:
    """y = x + w, with w's four floats kept at `location` (relative to the model's folder)."""
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight],
    )
    folder.mkdir(exist_ok=True)
    onnx.save(helper.make_model(graph), folder / "model.onnx")
    return folder / "model.onnx"


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink"])
def test_onnx_external_data_outside_the_model_folder_is_refused(sandbox, kind):
    secret = sandbox / "keep.txt"
    folder = sandbox.parent / "model"
    folder.mkdir()
    if kind == "symlink":
        os.symlink(secret, folder / "weights.bin")
    location = {"traversal": "../sandbox/keep.txt", "absolute": str(secret), "symlink": "weights.bin"}[kind]
    path = model_with_external_weight(folder, location)
    with pytest.raises(kiln.FrontendError, match=r"initializer 'w' keeps its data at .*outside the model's folder"):
        kiln.compile(str(path))


def test_onnx_external_data_inside_the_folder_is_read(tmp_path):
    path = model_with_external_weight(tmp_path / "model", "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (y,) = kiln.compile(str(path))(torch.ones(4))
    assert torch.equal(y, torch.arange(4.0) + 1)


def test_onnx_external_data_past_the_end_of_its_file_is_refused(tmp_path):
    path = model_with_external_weight(tmp_path / "model", "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 8)  # half of the 16 bytes w needs
    with pytest.raises(kiln.FrontendError, match="external data"):
        kiln.compile(str(path))


@pytest.fixture(scope="module")
def database_folder(tmp_path_factory):
    """The host target's database folder: the one `kiln.compile(tuning_dir=root)` opens."""
    import tvm

    from kiln.backends.targets import resolve_target

    root = tmp_path_factory.mktemp("tuning-root")
    target = tvm.target.Target(resolve_target("llvm").tvm_target)
    return root, TuningDatabase.for_target(root, target).path


@pytest.mark.parametrize("case,message", [
    ("symlink", "symlink or not a plain file"),
    ("not json", r"database_tuning_record.json:1: not a JSON line"),
    ("wrong shape", r"database_tuning_record.json:2: not a MetaSchedule record line"),
    ("bad workload", r"database_workload.json:1: not a MetaSchedule workload line"),
    ("oversized", "over the 0 MiB cap"),
])
def test_hostile_tuning_database_is_refused_before_tvm_reads_it(database_folder, sandbox, monkeypatch, case, message):
    root, folder = database_folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS_FILE, RECORDS_FILE):
        (folder / name).unlink(missing_ok=True)
    (folder / WORKLOADS_FILE).write_text(json.dumps(["123", "e30="]) + "\n")
    records = folder / RECORDS_FILE
    if case == "symlink":
        os.symlink(sandbox / "keep.txt", records)
    elif case == "not json":
        records.write_text("{not json\n")
    elif case == "wrong shape":
        records.write_text(json.dumps([0, [[], 1.0, {}, []]]) + "\n" + json.dumps([7, "trace"]) + "\n")
    elif case == "bad workload":
        (folder / WORKLOADS_FILE).write_text(json.dumps({"shash": 1}) + "\n")
        records.write_text("")
    else:
        records.write_text(json.dumps([0, [[], 1.0, {}, []]]) + "\n")
        monkeypatch.setattr("kiln.backends.tvm.tuning.database.MAX_DATABASE_FILE_BYTES", 4)
    model, x = models.MLP().eval(), torch.randn(2, 64)
    with pytest.raises(kiln.ArtifactError, match=message):
        kiln.compile(model, (x,), tuning_dir=root)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model, x = models.MLP().eval(), torch.randn(2, 64)
    folder = kiln.compile(model, (x,)).export(tmp_path_factory.mktemp("bundle") / "bundle")
    return folder


def run_bundle(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(folder / "run.py")], capture_output=True, text=True, timeout=300, cwd=folder)


def test_exported_bundle_runs_with_its_recorded_checksum(bundle):
    manifest = json.loads((bundle / "kiln_bundle.json").read_text())
    assert manifest["library_sha256"] == hashlib.sha256((bundle / "module.so").read_bytes()).hexdigest()
    result = run_bundle(bundle)
    assert result.returncode == 0 and "latency:" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("case,message", [("changed byte", "SHA-256 is not the one"),
                                          ("library outside", "not a plain file of")])
def test_bundle_runner_refuses_a_swapped_library_before_loading_it(bundle, tmp_path, case, message):
    copy = copy_bundle(bundle, tmp_path / "bundle")
    if case == "changed byte":
        library = bytearray((copy / "module.so").read_bytes())
        library[len(library) // 2] ^= 1
        (copy / "module.so").write_bytes(bytes(library))
    else:
        manifest = json.loads((copy / "kiln_bundle.json").read_text())
        (tmp_path / "elsewhere.so").write_bytes((bundle / "module.so").read_bytes())
        manifest["library"] = "../elsewhere.so"
        (copy / "kiln_bundle.json").write_text(json.dumps(manifest))
    result = run_bundle(copy)
    assert result.returncode != 0 and "BundleError" in result.stderr and message in result.stderr, result.stderr[-2000:]


def copy_bundle(bundle: Path, copy: Path) -> Path:
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize("case,message", [
    ("past the end", "does not fit the weights file"), ("wrong shape", "does not fit the weights file"),
    ("unknown dtype", "does not fit the weights file"), ("index missing", "not a plain file"),
    ("weights a symlink", "not a plain file"), ("changed byte", "weights' SHA-256 is not the one"),
])
def test_hostile_weights_are_refused_by_the_bundle_runner_and_by_load(bundle, saved, tmp_path, case, message):
    """The weights' index may be anyone's: every entry must fit the file it points into, in a
    bundle (run.py on the board) and in an artifact (kiln.load)."""
    def tamper(folder: Path) -> None:
        index_path = folder / "weights.json"
        index = json.loads(index_path.read_text())
        first = index["tensors"][0]
        if case == "past the end":
            first["offset"] = (folder / "weights.bin").stat().st_size
        elif case == "wrong shape":
            first["shape"] = [d * 2 for d in first["shape"]]
        elif case == "unknown dtype":
            first["dtype"] = "object"
        elif case == "index missing":
            index_path.unlink()
            return
        elif case == "changed byte":
            data = bytearray((folder / "weights.bin").read_bytes())
            data[len(data) // 2] ^= 1
            (folder / "weights.bin").write_bytes(bytes(data))
            return
        else:
            (folder / "weights.bin").unlink()
            os.symlink(tmp_path / "elsewhere.bin", folder / "weights.bin")
            (tmp_path / "elsewhere.bin").write_bytes(b"\0" * 1024)
        index_path.write_text(json.dumps(index))

    copy = copy_bundle(bundle, tmp_path / "bundle")
    tamper(copy)
    if case not in ("index missing", "weights a symlink", "changed byte"):  # the manifest vouches for the weights it records
        manifest = json.loads((copy / "kiln_bundle.json").read_text())
        manifest["weights_sha256"] = bundle_runner.weights_sha256(copy)
        (copy / "kiln_bundle.json").write_text(json.dumps(manifest))
    result = run_bundle(copy)
    assert result.returncode != 0 and "BundleError" in result.stderr and message in result.stderr, result.stderr[-2000:]

    if case in ("index missing", "weights a symlink", "changed byte"):  # an artifact's members: checked by its manifest
        return
    path = saved / "model.kiln"
    unpacked = tmp_path / "artifact"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(unpacked)
    tamper(unpacked / "files")
    manifest = json.loads((unpacked / "manifest.json").read_text())
    manifest["files"]["weights.json"] = hashlib.sha256((unpacked / "files" / "weights.json").read_bytes()).hexdigest()
    (unpacked / "manifest.json").write_text(json.dumps(manifest))
    tampered = tmp_path / "tampered.kiln"
    with zipfile.ZipFile(tampered, "w") as archive:
        for member in sorted(unpacked.rglob("*")):
            if member.is_file():
                archive.write(member, str(member.relative_to(unpacked)))
    with pytest.raises(kiln.ArtifactError, match=message):
        kiln.load(tampered)


def test_export_refuses_to_write_through_a_symlink(sandbox, tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    os.symlink(sandbox / "keep.txt", folder / "module.so")
    model, x = models.MLP().eval(), torch.randn(2, 64)
    with pytest.raises(kiln.ArtifactError, match="module.so is a symlink"):
        kiln.compile(model, (x,)).export(folder)


@pytest.mark.parametrize("address", ["8.8.8.8:9090", "2001:4860:4860::8888:9090"])
def test_rpc_server_on_a_public_address_warns(address):
    with pytest.warns(OpenRPCAddressWarning, match="no authentication"):
        warn_if_public(address)


@pytest.mark.parametrize("address", ["127.0.0.1:9090", "localhost:9090", "192.168.1.20:9090", "10.0.0.5:9090",
                                     "172.16.3.4:9090", "fe80::1:9090"])
def test_rpc_server_on_loopback_or_a_private_range_does_not_warn(address):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpenRPCAddressWarning)
        warn_if_public(address)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model, x = models.MLP().eval(), torch.randn(2, 64)
    kiln.compile(model, (x,)).save(folder / "model.kiln")
    return folder


def test_cli_keygen_sign_verify_and_info(saved, capsys):
    artifact, key = saved / "model.kiln", saved / "signer.key"
    assert cli.main(["keygen", str(key)]) == 0
    assert key.is_file() and (saved / "signer.pub").is_file()
    assert cli.main(["keygen", str(saved / "other.key")]) == 0
    assert cli.main(["info", str(artifact)]) == 0
    unsigned = capsys.readouterr().out
    assert "signed:   no" in unsigned and "built by: kiln" in unsigned and "inputs:   " in unsigned

    assert cli.main(["verify", str(artifact), "--trusted-key", str(saved / "signer.pub")]) == 1
    assert "not signed" in capsys.readouterr().err
    assert cli.main(["sign", str(artifact), "--key", str(key)]) == 0
    assert cli.main(["verify", str(artifact), "--trusted-key", str(saved / "signer.pub")]) == 0
    assert "intact, and signed by a trusted key" in capsys.readouterr().out
    assert cli.main(["verify", str(artifact), "--trusted-key", str(saved / "other.pub")]) == 1
    assert "not among the trusted keys" in capsys.readouterr().err

    assert cli.main(["info", str(artifact)]) == 0
    from kiln.signing import _public_bytes

    assert f"by {_public_bytes(saved / 'signer.pub').hex()} (claimed" in capsys.readouterr().out


def test_cli_info_of_a_hostile_manifest_is_an_error_not_a_traceback(saved, tmp_path, capsys):
    import zipfile

    path = tmp_path / "odd.kiln"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "kiln-artifact", "version": 1, "target": "not a dict"}))
        archive.writestr("signature.json", b"\xff\xfe")
    assert cli.main(["info", str(path)]) == 1
    assert "kiln: error:" in capsys.readouterr().err
