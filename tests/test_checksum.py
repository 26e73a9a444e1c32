"""kiln/checksum.py: the BLAKE3 digests that artifacts, the compile cache and fingerprints use."""

import hashlib

import blake3
import pytest
import torch

from kiln import checksum
from kiln.fingerprint import hash_tensors


@pytest.mark.parametrize("size", [0, 1000, checksum.PARALLEL_BYTES + 12345])
def test_digest_is_blake3_whether_hashed_on_one_core_or_all(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert checksum.digest(data) == blake3.blake3(data).digest()
    assert checksum.file_checksum(data) == checksum.PREFIX + blake3.blake3(data).hexdigest()


def test_any_changed_byte_breaks_a_checksum():
    data = bytearray(range(256)) * (checksum.PARALLEL_BYTES // 128)
    recorded = checksum.file_checksum(bytes(data))
    assert checksum.matches(bytes(data), recorded)
    for position in (0, len(data) // 2, len(data) - 1):
        changed = bytearray(data)
        changed[position] ^= 1
        assert not checksum.matches(bytes(changed), recorded)
    assert not checksum.matches(bytes(data[:-1]), recorded)


def test_checksums_of_earlier_versions_still_verify(monkeypatch):
    """Plain SHA-256 for every file, then the SHA-256 of 16 MiB chunks' SHA-256 digests."""
    monkeypatch.setattr(checksum, "TREE_CHUNK_BYTES", 64)
    data = bytes(range(256)) * 3
    assert checksum.matches(data, hashlib.sha256(data).hexdigest())
    assert not checksum.matches(data[1:], hashlib.sha256(data).hexdigest())
    chunks = b"".join(hashlib.sha256(data[start:start + 64]).digest() for start in range(0, len(data), 64))
    tree = checksum.TREE_PREFIX + hashlib.sha256(chunks).hexdigest()
    assert checksum.matches(data, tree)
    assert not checksum.matches(data[:-1] + b"\1", tree)
    assert not checksum.matches(data[:64], checksum.TREE_PREFIX + hashlib.sha256(chunks[:32]).hexdigest())


def test_tensor_digests_see_names_dtypes_shapes_and_every_byte():
    def digest_of(named):
        digest = hashlib.sha256()
        hash_tensors(digest, named)
        return digest.hexdigest()

    weight = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    base = digest_of([("w", weight)])
    assert base == digest_of([("w", weight.clone())])
    changed = weight.clone()
    changed[9, 9] += 1
    variants = [[("v", weight)], [("w", weight.double())], [("w", weight.reshape(100))], [("w", changed)],
                [("w", weight.t())], [("w", weight), ("e", torch.empty(0))]]
    assert len({base, *(digest_of(named) for named in variants)}) == 1 + len(variants)
