"""The compile cache: a compiled module is built once per model, options, target and versions.

Entries are `.kiln` artifacts named by the SHA-256 of everything the build depends on (the
captured IR and its weights, the pass pipeline and its options, the target with its CPU
features, the tuning records it used, the Kiln/TVM/torch versions), under `$KILN_CACHE_DIR`
(default ~/.cache/kiln/compiled). Each is written to a temporary file and renamed into place, so
two processes filling the cache at once each see either no entry or a whole one; entries are
`local` artifacts, stored uncompressed, so that their weights are mapped in place. An entry is
loaded through `artifact.read_artifact`, which checks every file's checksum before any library is
mapped, and must name the key it was stored under: one that fails either is deleted and rebuilt.
A torch module's fingerprint (kiln/fingerprint.py: its classes' source, attributes, weights and
inputs' shapes) names the entry its last capture led to, so a warm compile skips the capture;
kiln/compiler.py checks such an entry against the eager model before it uses it.
The cache keeps to `$KILN_CACHE_SIZE` (default 4G), dropping the least recently used entries.
A folder that someone other than this user may write to is not used at all: its libraries
would be code that user chose.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from kiln import background
from kiln.errors import KilnError
from kiln.fingerprint import hash_tensors
from kiln.module import CompiledModule, load_module
from kiln.version import __version__

if TYPE_CHECKING:
    from kiln.ir.graph import Graph

SUFFIX = ".kiln"
ALIASES = "models"  # model fingerprint -> entry key: the shortcut past capture (kiln/fingerprint.py)
ENTRY_FORMAT = 3  # 2: weights apart from the program (kiln/backends/tvm/weights.py); 3: keys hold every constant and the calling convention
DEFAULT_SIZE = 4 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_root() -> Path:
    configured = os.environ.get("KILN_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "kiln" / "compiled"


def _size_limit() -> int:
    text = os.environ.get("KILN_CACHE_SIZE", "").strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_SIZE
    number, unit = (text[:-1], text[-1]) if text[-1] in _UNITS else (text, "")
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise KilnError(f"KILN_CACHE_SIZE={os.environ['KILN_CACHE_SIZE']!r}: give a size such as 500M or 4G") from None


def graph_key(graph: "Graph", options: dict[str, Any], tensors: Iterable[torch.Tensor] = ()) -> str:
    """The entry of a captured Kiln graph: everything its compiled code depends on. Its code; its
    calling convention (each input's shape, dtype, strides and device, the dynamic dims and their
    ranges, the Python values baked in as inputs or returned as outputs, the inputs it writes);
    and every tensor the program reads, whatever torch.export made of it (parameter, buffer, or
    a plain tensor attribute lifted as a constant)."""
    from kiln.signature import Signature

    placeholders = [node.meta["val"] for node in graph.module.graph.find_nodes(op="placeholder")]
    layout = [(str(value.stride()), str(value.device)) for value in placeholders]
    structure = json.dumps([Signature.of(graph).to_json(), graph.symbol_names, layout], sort_keys=True, default=repr)
    return cache_key(graph.module.code, structure, program_tensors(graph.module), options, tensors)


def program_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor an fx program reads (its `get_attr` targets, in the nested programs of
    control flow too), by name; a nested program stands for its code."""
    found: list[tuple[str, torch.Tensor]] = []
    for name, submodule in module.named_modules():
        graph = getattr(submodule, "graph", None)
        if graph is None:
            continue
        for node in graph.find_nodes(op="get_attr"):
            value = submodule
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                found.append((f"{name}.{node.target}", value))
            elif hasattr(value, "code"):
                found.append((f"{name}.{node.target}", torch.frombuffer(bytearray(value.code.encode()), dtype=torch.uint8)))
    return found


def cache_key(code: str, structure: str, weights: Iterable[tuple[str, torch.Tensor]], options: dict[str, Any],
              tensors: Iterable[torch.Tensor] = ()) -> str:
    """The entry's name: a captured graph's code, its inputs' structure and its weights, then
    `options` (every setting the build reads, JSON-able) and `tensors` (calibration batches),
    then the versions."""
    digest = hashlib.sha256()
    digest.update(code.encode())
    digest.update(structure.encode())
    hash_tensors(digest, list(weights))
    digest.update(json.dumps({"options": options, "versions": versions()}, sort_keys=True, default=repr).encode())
    hash_tensors(digest, [("", tensor) for tensor in tensors])
    return digest.hexdigest()


def versions() -> dict[str, Any]:
    """What built an entry, besides its inputs: the versions of Kiln, torch, TVM, Python, and of
    the entries' own layout."""
    import tvm

    return {"kiln": __version__, "torch": torch.__version__, "tvm": tvm.__version__, "python": sys.version,
            "entry": ENTRY_FORMAT}


@dataclass(frozen=True)
class Entry:
    path: Path
    bytes: int
    last_used: float


class CompileCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_root()

    def usable(self) -> str | None:
        """Why this folder cannot be the cache (None when it can): made here for this user alone,
        or already this user's and writable by nobody else."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            status = self.root.stat()
        except OSError as error:
            return f"cannot create the compile cache {self.root}: {error.strerror}"
        if status.st_uid != os.getuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (f"the compile cache {self.root} is not this user's alone (owner or group/other write "
                    f"permission): its libraries could be anyone's code; not used")
        return None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def load(self, key: str) -> "tuple[CompiledModule | None, str]":
        """The module stored under `key`, or None; and a note for the report (why it was rebuilt)."""
        background.wait(key)  # this process may be storing it: wait for the whole entry
        path = self._path(key)
        if not path.is_file():
            return None, ""
        try:
            module = load_module(path, expect={"cache_key": key})
        except KilnError as error:
            path.unlink(missing_ok=True)
            return None, f"cache entry {key[:12]} was corrupt and is rebuilt ({error})"
        os.utime(path)  # least recently used goes first
        return module, ""

    def drop(self, key: str) -> None:
        """Remove the entry under `key` (one that was loaded and found wrong)."""
        self._path(key).unlink(missing_ok=True)

    def _alias(self, fingerprint: str) -> Path:
        return self.root / ALIASES / fingerprint[:2] / fingerprint

    def key_of(self, fingerprint: str) -> tuple[str, dict[str, str]] | None:
        """The entry a model fingerprint (kiln/fingerprint.py) was last compiled to, and the
        source files (path -> SHA-256) its forward ran then; None if there is none."""
        try:
            record = json.loads(self._alias(fingerprint).read_text(encoding="utf-8"))
            key, sources = record["key"], record["sources"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)
                and isinstance(sources, dict)):
            return None
        return key, sources

    def remember(self, fingerprint: str, key: str, sources: dict[str, str] | None) -> None:
        """Record that the model with `fingerprint`, whose forward ran code from `sources`,
        compiles to entry `key` (written whole, renamed). Without `sources` (code from no file)
        nothing is recorded: the next compile captures the model."""
        if sources is None:
            return
        path = self._alias(fingerprint)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".partial")
            with os.fdopen(handle, "w") as file:
                json.dump({"key": key, "sources": sources}, file)
            os.replace(temporary, path)
        except Exception as error:  # noqa: BLE001 - the next compile captures the model: slower, not wrong
            warn_unusable(f"could not record the model's fingerprint in the compile cache {self.root}: {error}")

    def forget(self, fingerprint: str) -> None:
        self._alias(fingerprint).unlink(missing_ok=True)

    def store_in_background(self, key: str, module: "CompiledModule") -> None:
        """`store`, after the compile has returned (kiln/background.py): writing a BERT-base's
        kernels and weights takes a second or two, which the compile's caller need not wait for. A
        `load` of the same key in this process waits for it."""
        background.start(key, lambda: self._store_reporting(key, module))

    def _store_reporting(self, key: str, module: "CompiledModule") -> None:
        try:
            self.store(key, module)
        except Exception as error:  # noqa: BLE001 - a failed store costs the next compile its speed, never this one its result
            warn_unusable(f"could not store the build in the compile cache {self.root}: {type(error).__name__}: {error}")

    def store(self, key: str, module: "CompiledModule") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(exist_ok=True, mode=0o700)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".partial")
            os.close(handle)
            try:
                module.save(temporary, extra={"cache_key": key}, local=True)
                os.replace(temporary, path)
            finally:
                Path(temporary).unlink(missing_ok=True)
            self.evict(_size_limit())
        except OSError as error:  # a full disk costs the next compile its speed, not this one its result
            warn_unusable(f"could not store the build in the compile cache {self.root}: {error}")

    def entries(self) -> list[Entry]:
        found = []
        for path in self.root.glob(f"??/*{SUFFIX}"):
            try:
                status = path.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            found.append(Entry(path, status.st_size, status.st_mtime))
        return sorted(found, key=lambda entry: entry.last_used)

    def evict(self, limit: int) -> int:
        """Remove the least recently used entries until the cache holds at most `limit` bytes;
        how many went."""
        entries = self.entries()
        total, removed = sum(entry.bytes for entry in entries), 0
        for entry in entries:
            if total <= limit:
                break
            entry.path.unlink(missing_ok=True)
            total -= entry.bytes
            removed += 1
        return removed

    def clear(self) -> int:
        removed = len(self.entries())
        self.evict(0)
        for leftover in [*self.root.glob("??/.*.partial"), *self.root.glob(f"{ALIASES}/??/*")]:  # partial: a killed process's
            leftover.unlink(missing_ok=True)
        return removed

    def describe(self) -> str:
        entries = self.entries()
        used = sum(entry.bytes for entry in entries)
        return (f"compile cache {self.root}: {len(entries)} entries, {used / (1 << 20):.1f} MiB of "
                f"{_size_limit() / (1 << 20):.0f} MiB (KILN_CACHE_DIR, KILN_CACHE_SIZE)")


def warn_unusable(reason: str) -> None:
    warnings.warn(f"kiln: {reason}", stacklevel=3)
