"""The `.kiln` artifact: one zip file with a manifest, checksums and the backend's files.

Loading needs no model class and no Python source: only Kiln, and TVM for TVM targets.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, TypeVar

from kiln.errors import ArtifactError

FORMAT = "kiln-artifact"
VERSION = 1
MANIFEST = "manifest.json"
T = TypeVar("T")


def write_artifact(path: str | Path, manifest: dict[str, Any], save_files: Callable[[Path], None]) -> None:
    """`save_files(folder)` writes the backend's files; they are packed with their checksums."""
    with tempfile.TemporaryDirectory() as folder:
        save_files(Path(folder))
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        checksums = {str(p.relative_to(folder)): _sha256(p.read_bytes()) for p in files}
        full = {"format": FORMAT, "version": VERSION, **manifest, "files": checksums}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(full, indent=1))
            for p in files:
                archive.write(p, f"files/{p.relative_to(folder)}")


def read_artifact(path: str | Path, load_files: Callable[[dict[str, Any], Path], T]) -> T:
    """Check the artifact whole, unpack it and hand the manifest and folder to `load_files`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such Kiln artifact")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path}: not a Kiln artifact (format {manifest.get('format')!r})")
            if manifest.get("version") != VERSION:
                raise ArtifactError(f"{path}: artifact format version {manifest.get('version')}, this Kiln reads {VERSION}")
            with tempfile.TemporaryDirectory() as folder:
                for name, checksum in manifest["files"].items():
                    data = archive.read(f"files/{name}")
                    if _sha256(data) != checksum:
                        raise ArtifactError(f"{path}: the artifact is corrupt: checksum mismatch in {name}")
                    (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
                    (Path(folder) / name).write_bytes(data)
                return load_files(manifest, Path(folder))
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
        raise ArtifactError(f"{path}: the artifact is truncated or not a zip file ({error})") from error
    except (KeyError, json.JSONDecodeError, zlib.error) as error:
        raise ArtifactError(f"{path}: the artifact is corrupt or incomplete ({type(error).__name__}: {error})") from error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
