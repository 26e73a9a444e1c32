"""SHA-256 of large buffers on every core.

A warm compile of BERT-base hashes its 414 MB of weights twice (the model's fingerprint, then
the cache entry's check before anything of it is loaded): half a second on one core. One SHA-256
stream cannot be split across cores, so a buffer longer than one chunk is digested as a hash
tree of depth one: the SHA-256 of its 16 MiB chunks' SHA-256 digests. hashlib releases the GIL
while it hashes, so a thread per core is enough (threads of its own per call, not a pool: the
compile cache stores its entries on a thread that may still run while the interpreter shuts down,
when `concurrent.futures` refuses new work).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from typing import Sequence

CHUNK_BYTES = 16 << 20
TREE_PREFIX = "sha256-tree-16M:"  # an artifact checksum of this form is a tree digest; a bare hex one is plain SHA-256

def chunk_digests(buffers: Sequence[memoryview]) -> list[list[bytes]]:
    """Per buffer (byte-format memoryviews), the SHA-256 digests of its CHUNK_BYTES chunks, in
    order (one empty buffer: one digest of nothing), hashed on all cores."""
    pieces = [(index, buffer[start:start + CHUNK_BYTES])
              for index, buffer in enumerate(buffers) for start in range(0, max(len(buffer), 1), CHUNK_BYTES)]
    hashed = [b""] * len(pieces)
    claim = itertools.count()  # next() on it is atomic under the GIL: each piece is hashed once

    def hash_pieces() -> None:
        while (position := next(claim)) < len(pieces):
            hashed[position] = hashlib.sha256(pieces[position][1]).digest()

    helpers = [threading.Thread(target=hash_pieces, name="kiln-checksum")
               for _ in range(min(os.cpu_count() or 1, len(pieces)) - 1)]
    for helper in helpers:
        helper.start()
    hash_pieces()
    for helper in helpers:
        helper.join()
    digests: list[list[bytes]] = [[] for _ in buffers]
    for (index, _), digest in zip(pieces, hashed):
        digests[index].append(digest)
    return digests


def file_checksum(data: bytes | memoryview) -> str:
    """What an artifact's manifest records for a file: plain SHA-256 (hex) up to one chunk, the
    tree digest with its prefix beyond."""
    view = memoryview(data).cast("B")
    if len(view) <= CHUNK_BYTES:
        return hashlib.sha256(view).hexdigest()
    return TREE_PREFIX + hashlib.sha256(b"".join(chunk_digests([view])[0])).hexdigest()


def matches(data: bytes | memoryview, checksum: str) -> bool:
    """Whether `data` has `checksum`, whichever of the two forms it is in (artifacts written
    before the tree form hold plain SHA-256 for every file)."""
    view = memoryview(data).cast("B")
    if checksum.startswith(TREE_PREFIX):
        return len(view) > CHUNK_BYTES and file_checksum(view) == checksum
    return hashlib.sha256(view).hexdigest() == checksum
