"""Digests of weights and checksums of files: BLAKE3, on every core.

A warm compile of BERT-base hashes its 414 MB of weights twice (the model's fingerprint, then the
cache entry's check before anything of it is loaded). BLAKE3 is a cryptographic hash whose input
is a Merkle tree of 1 KiB chunks, so one digest is computed on every core; the `blake3` package
(the reference Rust implementation, with AVX-512, AVX2 and NEON kernels) does so with the GIL
released. On a 2-core Zen 4 it hashes those 414 MB in 46 ms; SHA-256 with the CPU's SHA
instructions took 240 ms on one core, 125 ms as a tree of 16 MiB chunks on both.

Artifacts written by earlier Kiln versions record SHA-256: plain hex, or the hex of that 16 MiB
tree after TREE_PREFIX. They still verify. Board bundles keep plain SHA-256 (their runner,
kiln/backends/tvm/runtime/bundle_runner.py, has nothing but the standard library and TVM).
"""

from __future__ import annotations

import hashlib

import blake3

PREFIX = "blake3:"
PARALLEL_BYTES = 1 << 20  # below this, starting the other cores costs more than it saves
TREE_PREFIX = "sha256-tree-16M:"  # earlier versions, files over 16 MiB: SHA-256 of the chunks' SHA-256s
TREE_CHUNK_BYTES = 16 << 20


def digest(data: bytes | memoryview) -> bytes:
    """The BLAKE3 digest (32 bytes) of `data`, on every core when it is large."""
    view = memoryview(data).cast("B")
    return blake3.blake3(view, max_threads=blake3.blake3.AUTO if len(view) >= PARALLEL_BYTES else 1).digest()


def file_checksum(data: bytes | memoryview) -> str:
    """What an artifact's manifest records for a file."""
    return PREFIX + digest(data).hex()


def matches(data: bytes | memoryview, checksum: str) -> bool:
    """Whether `data` has `checksum`, in the form Kiln writes or either SHA-256 form it wrote before."""
    view = memoryview(data).cast("B")
    if checksum.startswith(PREFIX):
        return file_checksum(view) == checksum
    if checksum.startswith(TREE_PREFIX):
        chunks = b"".join(hashlib.sha256(view[start:start + TREE_CHUNK_BYTES]).digest()
                          for start in range(0, len(view), TREE_CHUNK_BYTES))
        return len(view) > TREE_CHUNK_BYTES and TREE_PREFIX + hashlib.sha256(chunks).hexdigest() == checksum
    return hashlib.sha256(view).hexdigest() == checksum
