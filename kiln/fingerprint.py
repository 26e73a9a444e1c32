"""What a torch module's capture depends on, read without capturing it: the compile cache's
shortcut (kiln/cache.py), which spares a warm `kiln.compile` torch.export's seconds.

The fingerprint holds the source files of every module class (and their bases), the versions of
the packages they come from, every module's attributes (a Hugging Face config, flags, sizes),
its parameters and buffers byte for byte, the inputs' structure, dtypes and shapes, and the
compile options. What it cannot see (a helper in a file no module class is defined in, a global
flag) is why a hit is only trusted once the model, run eagerly on the example inputs, ran code
from the very files (same contents) it ran when it was compiled (`recording_sources`), and the
cached module agrees with it as closely as it did when it was built (kiln/compiler.py). A module
Kiln cannot fingerprint faithfully (a class without a source file, forward hooks, a `forward`
set on the instance, an attribute whose only description is its address) has none, and is
captured as usual.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import sys
import sysconfig
from typing import Any, Iterator, Sequence

import torch
import torch.utils._pytree as pytree

from kiln import checksum


class Unfingerprintable(Exception):
    """Something the capture may depend on that the fingerprint cannot describe."""


_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> SHA-256, for this process
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
_SKIPPED = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_backward_hooks", "_backward_pre_hooks",
            "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
            "_forward_hooks_always_called", "_is_full_backward_hook", *_HOOKS}


def model_fingerprint(model: torch.nn.Module, example_inputs: Sequence[Any], example_kwargs: dict[str, Any] | None,
                      options: dict[str, Any], tensors: Sequence[torch.Tensor] = ()) -> str | None:
    """SHA-256 of everything above, `options` (JSON-able) and `tensors` (calibration batches), or
    None when the model cannot be fingerprinted faithfully."""
    digest = hashlib.sha256()
    try:
        digest.update(json.dumps(_modules(model), sort_keys=True).encode())
        digest.update(json.dumps(_inputs(example_inputs, example_kwargs), sort_keys=True).encode())
        digest.update(json.dumps(options, sort_keys=True, default=repr).encode())
    except Unfingerprintable:
        return None
    hash_tensors(digest, [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False),
                          *(("", tensor) for tensor in tensors)])
    return digest.hexdigest()


@contextlib.contextmanager
def recording_sources(found: set[str]) -> Iterator[None]:
    """Within: the file of every Python function that runs is added to `found` (what the
    fingerprint cannot see: a helper in a file no module class is defined in)."""

    def profile(frame, event, argument) -> None:
        if event == "call":
            found.add(frame.f_code.co_filename)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


_TORCH_ROOT = os.path.dirname(torch.__file__) + os.sep
_STDLIB_ROOT = sysconfig.get_paths()["stdlib"] + os.sep


def _versioned(path: str) -> bool:
    """Torch's and the standard library's files: the fingerprint holds their versions."""
    return path.startswith(_TORCH_ROOT) or (path.startswith(_STDLIB_ROOT) and "site-packages" not in path)


def source_hashes(files: set[str]) -> dict[str, str] | None:
    """SHA-256 of each file a forward ran code from, but torch's and the standard library's
    (their versions are in the fingerprint); None where code ran from no file (exec, generated
    code), which no fingerprint can vouch for."""
    hashes = {}
    for path in sorted(files):
        if path.startswith("<frozen ") or _versioned(path):
            continue
        if not os.path.isfile(path):
            return None
        hashes[path] = _file_hash(path)
    return hashes


def _file_hash(path: str) -> str:
    status = os.stat(path)
    cache_key = (path, status.st_mtime_ns, status.st_size)
    if cache_key not in _FILE_HASHES:
        with open(path, "rb") as file:
            _FILE_HASHES[cache_key] = hashlib.sha256(file.read()).hexdigest()
    return _FILE_HASHES[cache_key]


def hash_tensors(digest: "hashlib._Hash", named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Add each tensor's name, dtype, shape and the BLAKE3 digest of its bytes (kiln/checksum.py:
    on every core) to `digest`."""
    for name, tensor in named_tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(checksum.digest(tensor.reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else b""))


def _modules(model: torch.nn.Module) -> list[Any]:
    described = []
    for name, module in model.named_modules(remove_duplicate=False):
        if any(getattr(module, hooks, None) for hooks in _HOOKS) or "forward" in module.__dict__:
            raise Unfingerprintable(f"{name}: hooks or an instance forward")
        attributes = {key: _value(value, 0) for key, value in module.__dict__.items() if key not in _SKIPPED}
        described.append([name, _class(type(module)), attributes])
    return described


def _class(cls: type) -> list[Any]:
    """A class by name, with the source file of it and of each base that is not torch's own."""
    return [f"{cls.__module__}.{cls.__qualname__}",
            [_source(base) for base in cls.__mro__ if base.__module__.split(".")[0] not in ("torch", "builtins")]]


def _source(obj: Any) -> list[str]:
    try:
        path = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        path = None
    if path is None or not os.path.isfile(path):  # a class from `python -c`, exec or the prompt: '<string>'
        raise Unfingerprintable(f"{obj!r} has no source file")
    package = getattr(inspect.getmodule(obj), "__name__", "").split(".")[0]
    return [_file_hash(path), package, _version(package)]


@functools.cache
def _version(package: str) -> str:
    if package in sys.stdlib_module_names or not package:
        return ""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


_PLAIN = (type(None), bool, int, float, str)
_MAX_DEPTH = 4


def _value(value: Any, depth: int) -> Any:
    """A JSON description of an attribute, for the fingerprint."""
    if isinstance(value, _PLAIN):
        return [type(value).__name__, value if not isinstance(value, float) else repr(value)]
    if isinstance(value, (torch.dtype, torch.device, torch.Size, torch.memory_format, torch.layout)):
        return str(value)
    if isinstance(value, torch.Tensor):
        digest = hashlib.sha256()
        hash_tensors(digest, [("", value)])
        return ["tensor", digest.hexdigest()]
    if depth >= _MAX_DEPTH:
        raise Unfingerprintable("nested too deep")
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_value(item, depth + 1) for item in value]
        return [type(value).__name__, sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items]
    if isinstance(value, dict):
        return ["dict", sorted([repr(key), _value(item, depth + 1)] for key, item in value.items())]
    if hasattr(value, "to_json_string"):  # a Hugging Face config: every field
        return ["config", _class(type(value)), value.to_json_string(use_diff=False)]
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.ismethod(value):
        return ["code", getattr(value, "__qualname__", ""), _source(value)]
    if isinstance(value, torch.nn.Module):  # a module held outside _modules (a shared one)
        return ["module", _class(type(value))]
    if hasattr(value, "__dict__"):
        return ["object", _class(type(value)), {key: _value(item, depth + 1) for key, item in vars(value).items()}]
    text = repr(value)
    if " at 0x" in text:
        raise Unfingerprintable(f"{type(value).__name__} is described by its address alone")
    return ["repr", type(value).__name__, text]


def _inputs(example_inputs: Sequence[Any], example_kwargs: dict[str, Any] | None) -> list[Any]:
    leaves, spec = pytree.tree_flatten((tuple(example_inputs), dict(example_kwargs or {})))
    described = [[str(t.dtype), list(t.shape), t.device.type] if isinstance(t, torch.Tensor) else _value(t, 0) for t in leaves]
    return [str(spec), described]
