"""The `.kiln` artifact: one zip file with a manifest, checksums and the backend's files.

Loading needs no model class and no Python source: only Kiln, and TVM for TVM targets.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Collection, Sequence, TypeVar

import numpy as np

from kiln.checksum import file_checksum, matches
from kiln.errors import ArtifactError

FORMAT = "kiln-artifact"
VERSION = 1
MANIFEST = "manifest.json"
T = TypeVar("T")


def write_artifact(path: str | Path, manifest: dict[str, Any], save_files: Callable[[Path], None], sign_with: Any = None,
                   compress: bool = True) -> None:
    """`save_files(folder)` writes the backend's files; they are packed with their checksums, and
    with `sign_with` (an Ed25519 private key or its PEM file) the manifest is signed.
    `compress=False` stores them as they are: a third larger, and read back without the second
    per 100 MB that inflating costs (the compile cache's entries)."""
    with tempfile.TemporaryDirectory() as folder:
        save_files(Path(folder))
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        checksums = {str(p.relative_to(folder)): file_checksum(p.read_bytes()) for p in files}
        manifest_bytes = json.dumps({"format": FORMAT, "version": VERSION, **manifest, "files": checksums}, indent=1).encode()
        signature = None
        if sign_with is not None:
            from kiln.signing import sign_manifest

            signature = sign_manifest(manifest_bytes, sign_with)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
            archive.writestr(MANIFEST, manifest_bytes)
            if signature is not None:
                archive.writestr(SIGNATURE, signature)
            for p in files:
                if compress:
                    archive.write(p, f"files/{p.relative_to(folder)}")
                else:
                    _write_aligned(archive, p, f"files/{p.relative_to(folder)}")


# zipalign's extra field (Android): padding that puts a stored member's data at an aligned offset
_PADDING_FIELD_ID = 0xD935
MEMBER_ALIGNMENT = 64  # TVM's DLPack import wants 64-byte aligned data: a mapped member is used in place


def _write_aligned(archive: zipfile.ZipFile, source: Path, name: str) -> None:
    """`source` stored (not compressed) with its data at a MEMBER_ALIGNMENT offset in the file."""
    info = zipfile.ZipInfo.from_file(source, name)
    info.compress_type = zipfile.ZIP_STORED
    zip64_extra = 20 if info.file_size * 1.05 > zipfile.ZIP64_LIMIT else 0  # what zipfile appends to the header
    data_start = archive.fp.tell() + 30 + len(name.encode()) + zip64_extra + 4
    padding = -data_start % MEMBER_ALIGNMENT
    info.extra = struct.pack("<HH", _PADDING_FIELD_ID, padding) + b"\0" * padding
    with source.open("rb") as reader, archive.open(info, "w") as writer:
        shutil.copyfileobj(reader, writer, 16 << 20)


def sign_artifact(path: str | Path, key: Any) -> None:
    """Sign an existing artifact in place (replacing any signature); its files are checked first."""
    from kiln.signing import sign_manifest

    path = Path(path)
    read_artifact(path, lambda manifest, folder, mapped: None)  # safe and whole, before it is vouched for
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist() if info.filename != SIGNATURE}
    signature = sign_manifest(members[MANIFEST], key)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".kiln-sign-", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, members.pop(MANIFEST))
            archive.writestr(SIGNATURE, signature)
            for name, data in members.items():
                archive.writestr(name, data)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def read_manifest(path: str | Path) -> tuple[dict[str, Any], bytes | None]:
    """The manifest and raw signature of an artifact, reading no file and loading no code."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _checked_manifest(_read_member(archive, MANIFEST, MAX_MANIFEST_BYTES, path), path)
            return manifest, _optional_member(archive, SIGNATURE, path)
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, json.JSONDecodeError, UnicodeDecodeError, zlib.error) as error:
        raise ArtifactError(f"{path}: not a readable Kiln artifact ({type(error).__name__}: {error})") from error


# Caps on what unpacking an artifact may write: a zip bomb is refused before it fills the disk.
MAX_FILE_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MANIFEST_BYTES = 16 << 20
SIGNATURE = "signature.json"


def read_artifact(path: str | Path, load_files: Callable[[dict[str, Any], Path, dict[str, np.ndarray]], T],
                  trusted_keys: Sequence[Any] | None = None, map_members: Collection[str] = ()) -> T:
    """Check the artifact whole, unpack it and hand the manifest, the folder and the mapped
    members to `load_files`.

    Nothing is written before every member is known to be safe: names relative and inside the
    folder, no symlinks, no duplicates, exactly the files the manifest lists, sizes under the caps.
    With `trusted_keys`, the manifest (which holds every file's checksum, kiln/checksum.py) must carry a valid
    Ed25519 signature by one of them, checked before anything is unpacked or loaded. A file named
    in `map_members` that the artifact stores uncompressed is not unpacked: it is mapped from the
    artifact (copy-on-write: the artifact is never written), checked in place and handed over by
    name as a uint8 array (the weights: hundreds of MB not copied twice); compressed, it is unpacked."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such Kiln artifact")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest_bytes = _read_member(archive, MANIFEST, MAX_MANIFEST_BYTES, path)
            manifest = _checked_manifest(manifest_bytes, path)
            files = _checked_members(archive, manifest, path)
            if trusted_keys is not None:
                from kiln.signing import verify_manifest

                verify_manifest(manifest_bytes, _optional_member(archive, SIGNATURE, path), trusted_keys, path)
            with tempfile.TemporaryDirectory(prefix="kiln-artifact-", dir=_unpack_root(path)) as folder:
                root = Path(folder).resolve()
                total, mapped = 0, {}
                for name, checksum in files.items():
                    info = archive.getinfo(f"files/{name}")
                    if name in map_members and info.compress_type == zipfile.ZIP_STORED:
                        mapped[name] = _mapped_member(archive, info, path)
                        if not matches(mapped[name], checksum):
                            raise ArtifactError(f"{path}: the artifact is corrupt: checksum mismatch in {name}")
                        continue
                    data = _read_member(archive, f"files/{name}", MAX_FILE_BYTES, path)
                    total += len(data)
                    if total > MAX_TOTAL_BYTES:
                        raise ArtifactError(f"{path}: the artifact unpacks to over {MAX_TOTAL_BYTES >> 30} GiB; refused")
                    if not matches(data, checksum):
                        raise ArtifactError(f"{path}: the artifact is corrupt: checksum mismatch in {name}")
                    target = (root / name).resolve()
                    if root not in target.parents:  # checked by name already; this is the last line
                        raise ArtifactError(f"{path}: member {name!r} would be written outside the unpack folder")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                return load_files(manifest, root, mapped)
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
        raise ArtifactError(f"{path}: the artifact is truncated or not a zip file ({error})") from error
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, zlib.error) as error:
        raise ArtifactError(f"{path}: the artifact is corrupt or incomplete ({type(error).__name__}: {error})") from error


def _mapped_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """A stored member's bytes as a read-only-in-effect mapping of the artifact (copy-on-write, so
    writers of the array never reach the file), located from its local header."""
    archive.fp.seek(info.header_offset)
    header = archive.fp.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ArtifactError(f"{path}: member {info.filename!r} has no local header where the directory says; refused")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > path.stat().st_size:
        raise ArtifactError(f"{path}: member {info.filename!r} runs past the end of the artifact; refused")
    if info.file_size == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=(info.file_size,))


def _unpack_root(path: Path) -> str | None:
    """Where an artifact is unpacked: /dev/shm (memory) when it has room for twice the artifact,
    which spares writing a BERT-sized library to disk only to map it again; else the temp folder."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * path.stat().st_size:
            return str(shm)
    except OSError:
        pass
    return None


def _checked_manifest(manifest_bytes: bytes, path: Path) -> dict[str, Any]:
    manifest = json.loads(manifest_bytes)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a Kiln artifact (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('version')}, this Kiln reads {VERSION}")
    return manifest


def safe_member_name(name: str) -> bool:
    """A relative POSIX path of plain parts: no absolute path, drive, backslash, '..' or '.'."""
    if not name or name.startswith("/") or "\\" in name or ":" in name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _checked_members(archive: zipfile.ZipFile, manifest: dict[str, Any], path: Path) -> dict[str, str]:
    """The manifest's files, after checking the zip holds exactly those (and the manifest and an
    optional signature), each a regular file with a safe name and a size under the cap."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ArtifactError(f"{path}: the artifact's manifest has no valid file list")
    for name in files:
        if not safe_member_name(name):
            raise ArtifactError(f"{path}: the manifest lists an unsafe file name {name!r} (absolute, '..' or not a plain path); refused")
    names = [info.filename for info in archive.infolist()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ArtifactError(f"{path}: the artifact holds duplicate members {duplicates}; refused")
    expected = {MANIFEST, SIGNATURE} | {f"files/{name}" for name in files}
    unexpected = sorted(set(names) - expected)
    if unexpected:
        raise ArtifactError(f"{path}: the artifact holds members its manifest does not list: {unexpected[:5]}; refused")
    missing = sorted(f"files/{name}" for name in files if f"files/{name}" not in names)
    if missing:
        raise ArtifactError(f"{path}: the artifact is incomplete: its manifest lists {missing[:5]}, which it does not hold")
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode) or info.is_dir():
            raise ArtifactError(f"{path}: member {info.filename!r} is a {'symlink' if stat.S_ISLNK(mode) else 'folder'}; refused")
        if info.file_size > MAX_FILE_BYTES:
            raise ArtifactError(f"{path}: member {info.filename!r} unpacks to {info.file_size:,} bytes, over the "
                                f"{MAX_FILE_BYTES >> 30} GiB cap per file; refused")
    if sum(info.file_size for info in archive.infolist()) > MAX_TOTAL_BYTES:
        raise ArtifactError(f"{path}: the artifact unpacks to over {MAX_TOTAL_BYTES >> 30} GiB; refused")
    return files


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """A member's bytes, reading at most `limit` (the size in its header may lie)."""
    with archive.open(name) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path}: member {name!r} unpacks to over {limit:,} bytes, the cap; refused")
    return data


def _optional_member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes | None:
    return _read_member(archive, name, MAX_MANIFEST_BYTES, path) if name in archive.namelist() else None
