"""Hostile artifacts: each is refused with a clear ArtifactError, writes nothing outside Kiln's
own temporary folder and leaves no temporary files; signed artifacts are checked before any
library is mapped."""

import json
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import kiln
from kiln import models
from kiln.artifact import MANIFEST, SIGNATURE
from kiln.signing import generate_key


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    model, x = models.MLP().eval(), torch.randn(2, 64)
    compiled = kiln.compile(model, (x,))
    generate_key(folder / "signer.key")
    generate_key(folder / "other.key")
    compiled.save(folder / "plain.kiln")
    compiled.save(folder / "signed.kiln", sign_with=folder / "signer.key")
    torch.save({"x": x, "y": compiled(x)}, folder / "io.pt")
    return folder


def rewritten(source: Path, target: Path, edit) -> Path:
    """A copy of `source` whose members (name -> bytes) and manifest `edit` rewrote."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    manifest = json.loads(members[MANIFEST])
    edit(members, manifest)
    members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def add_file(name_of):
    def edit(members, manifest):
        import hashlib

        data = b"planted"
        name = name_of()
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
        members[f"files/{name}"] = data

    return edit


@pytest.mark.parametrize("kind", ["traversal", "absolute"])
def test_member_names_leaving_the_folder_are_refused_before_anything_is_written(built, sandbox, tmp_path, kind):
    escape = {"traversal": lambda: "../../../../" + str(sandbox / "x.txt").lstrip("/"), "absolute": lambda: str(sandbox / "x.txt")}[kind]
    path = rewritten(built / "plain.kiln", tmp_path / f"{kind}.kiln", add_file(escape))
    with pytest.raises(kiln.ArtifactError, match="unsafe file name"):
        kiln.load(path)


def test_symlink_member_is_refused(built, sandbox, tmp_path):
    path = tmp_path / "symlink.kiln"
    rewritten(built / "plain.kiln", path, add_file(lambda: "link"))
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            if info.filename == "files/link":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                data = str(sandbox / "keep.txt").encode()
            archive.writestr(info, data)
    with pytest.raises(kiln.ArtifactError, match="symlink"):
        kiln.load(path)


def test_zip_bomb_is_refused_by_its_size(built, sandbox, tmp_path, monkeypatch):
    import kiln.artifact as artifact

    monkeypatch.setattr(artifact, "MAX_FILE_BYTES", 1 << 20)  # a 1 MiB cap keeps the bomb small
    path = tmp_path / "bomb.kiln"
    import hashlib

    bomb = bytes(4 << 20)  # 4 MiB of zeros: a few KB compressed

    def edit(members, manifest):
        manifest["files"]["bomb.bin"] = hashlib.sha256(bomb).hexdigest()
        members["files/bomb.bin"] = bomb

    with zipfile.ZipFile(built / "plain.kiln") as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    manifest = json.loads(members[MANIFEST])
    edit(members, manifest)
    members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(kiln.ArtifactError, match="over the 0 GiB cap|cap"):
        kiln.load(path)


def test_duplicate_and_unlisted_members_are_refused(built, sandbox, tmp_path):
    unlisted = rewritten(built / "plain.kiln", tmp_path / "unlisted.kiln", lambda m, man: m.update({"files/extra.so": b"x"}))
    with pytest.raises(kiln.ArtifactError, match="does not list"):
        kiln.load(unlisted)
    duplicate = tmp_path / "duplicate.kiln"
    with zipfile.ZipFile(built / "plain.kiln") as source, zipfile.ZipFile(duplicate, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info))
        with pytest.warns(UserWarning):
            archive.writestr(MANIFEST, source.read(MANIFEST))
    with pytest.raises(kiln.ArtifactError, match="duplicate"):
        kiln.load(duplicate)


def test_manifest_listing_missing_files_is_refused(built, sandbox, tmp_path):
    path = rewritten(built / "plain.kiln", tmp_path / "missing.kiln", lambda m, man: man["files"].update({"gone.bin": "0" * 64}))
    with pytest.raises(kiln.ArtifactError, match="incomplete.*gone.bin"):
        kiln.load(path)


@pytest.mark.parametrize("field,value,message", [("format", "zip", "not a Kiln artifact"), ("version", 99, "format version 99")])
def test_manifest_of_another_format_or_version_is_refused(built, sandbox, tmp_path, field, value, message):
    path = rewritten(built / "plain.kiln", tmp_path / "other.kiln", lambda m, man: man.update({field: value}))
    with pytest.raises(kiln.ArtifactError, match=message):
        kiln.load(path)


@pytest.fixture(scope="module")
def board_artifact(tmp_path_factory):
    model, x = models.MLP().eval(), torch.randn(2, 64)
    try:
        board = kiln.compile(model, (x,), target="rpi4")
    except kiln.TargetError as error:
        pytest.skip(f"no cross toolchain: {error}")
    path = tmp_path_factory.mktemp("board") / "board.kiln"
    board.save(path)
    return path, x


def test_board_artifact_loads_but_refuses_to_run_here(board_artifact, sandbox):
    path, x = board_artifact
    with pytest.raises(kiln.TargetError, match="aarch64"):
        kiln.load(path)(x)


def test_library_for_another_architecture_under_a_host_manifest_is_refused_unmapped(built, board_artifact, tmp_path):
    """A manifest that says "this machine's CPU" over an aarch64 library: refused from the ELF
    header, before dlopen sees it."""
    with zipfile.ZipFile(board_artifact[0]) as archive:
        arm_library = archive.read("files/module.so")

    def swap(members, manifest):
        import hashlib

        members["files/module.so"] = arm_library
        manifest["files"]["module.so"] = hashlib.sha256(arm_library).hexdigest()

    path = rewritten(built / "plain.kiln", tmp_path / "swapped.kiln", swap)
    result = loads_library(path, keys=None)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome, mapped = result.stdout.splitlines()[-2:]
    assert outcome.startswith("refused: ") and "library is aarch64" in outcome and "x86_64" in outcome, outcome
    assert mapped == "never mapped"


def test_signed_artifact_loads_in_a_fresh_process_with_the_right_key(built):
    script = textwrap.dedent(f"""
        import torch, kiln
        io = torch.load({str(built / 'io.pt')!r})
        module = kiln.load({str(built / 'signed.kiln')!r}, trusted_keys=[{str(built / 'signer.pub')!r}])
        assert torch.equal(module(io["x"]), io["y"])
        print("signed ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signed ok" in result.stdout


def loads_library(path: Path, keys: list | None) -> subprocess.CompletedProcess:
    """Load in a fresh process and report whether the artifact's library was ever mapped."""
    script = textwrap.dedent(f"""
        import kiln
        try:
            kiln.load({str(path)!r}, trusted_keys={None if keys is None else [str(k) for k in keys]!r})
            outcome = "loaded"
        except kiln.ArtifactError as error:
            outcome = "refused: " + str(error)
        mapped = any("module.so" in line or "kiln-artifact-" in line for line in open("/proc/self/maps"))
        print(outcome); print("mapped" if mapped else "never mapped")
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["wrong key", "unsigned", "changed byte", "truncated signature"])
def test_untrusted_artifact_is_refused_before_its_library_is_mapped(built, tmp_path, case):
    path = built / "signed.kiln"
    keys = [built / "signer.pub"]
    if case == "wrong key":
        keys = [built / "other.pub"]
    elif case == "unsigned":
        path = built / "plain.kiln"
    elif case == "changed byte":
        def flip(members, manifest):
            library = bytearray(members["files/module.so"])
            library[len(library) // 2] ^= 1
            members["files/module.so"] = bytes(library)
            import hashlib

            manifest["files"]["module.so"] = hashlib.sha256(library).hexdigest()  # a tamperer updates the checksum

        path = rewritten(built / "signed.kiln", tmp_path / "tampered.kiln", flip)
    else:
        path = rewritten(built / "signed.kiln", tmp_path / "truncated.kiln",
                         lambda m, man: m.update({SIGNATURE: m[SIGNATURE][:40]}))
    result = loads_library(path, keys)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome, mapped = result.stdout.splitlines()[-2:]
    assert outcome.startswith("refused: ") and mapped == "never mapped"
    expected = {"wrong key": "not among the trusted keys", "unsigned": "not signed", "changed byte": "does not match",
                "truncated signature": "malformed or truncated"}[case]
    assert expected in outcome


def test_the_control_load_does_map_the_library(built):
    """The marker above is meaningful: a trusted load does map the library."""
    result = loads_library(built / "signed.kiln", [built / "signer.pub"])
    assert result.stdout.splitlines()[-2:] == ["loaded", "mapped"], result.stderr[-2000:]
