"""kiln/checksum.py: the chunked SHA-256 that artifacts, the compile cache and fingerprints use."""

import hashlib

import pytest
import torch

from kiln import checksum
from kiln.fingerprint import hash_tensors


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(checksum, "CHUNK_BYTES", 64)


def test_chunk_digests_are_each_chunks_sha256_in_order(small_chunks):
    buffers = [memoryview(bytes(range(200))), memoryview(b""), memoryview(b"x" * 64)]
    digests = checksum.chunk_digests(buffers)
    assert digests[0] == [hashlib.sha256(bytes(range(200))[start:start + 64]).digest() for start in (0, 64, 128, 192)]
    assert digests[1] == [hashlib.sha256(b"").digest()]
    assert digests[2] == [hashlib.sha256(b"x" * 64).digest()]


def test_a_file_of_one_chunk_has_its_plain_sha256(small_chunks):
    data = b"k" * 64
    assert checksum.file_checksum(data) == hashlib.sha256(data).hexdigest()
    assert checksum.matches(data, hashlib.sha256(data).hexdigest())


def test_a_larger_file_has_the_tree_digest_and_any_changed_byte_breaks_it(small_chunks):
    data = bytearray(range(256)) * 3
    tree = checksum.file_checksum(bytes(data))
    chunks = b"".join(hashlib.sha256(bytes(data[start:start + 64])).digest() for start in range(0, len(data), 64))
    assert tree == checksum.TREE_PREFIX + hashlib.sha256(chunks).hexdigest()
    assert checksum.matches(bytes(data), tree)
    for position in (0, 100, len(data) - 1):
        changed = bytearray(data)
        changed[position] ^= 1
        assert not checksum.matches(bytes(changed), tree)
    assert not checksum.matches(bytes(data[:64]), checksum.TREE_PREFIX + hashlib.sha256(chunks[:32]).hexdigest())


def test_plain_sha256_of_a_large_file_still_matches(small_chunks):
    """Artifacts written before the tree form recorded plain SHA-256 for every file."""
    data = bytes(range(256)) * 3
    assert checksum.matches(data, hashlib.sha256(data).hexdigest())
    assert not checksum.matches(data[1:], hashlib.sha256(data).hexdigest())


def test_tensor_digests_see_names_dtypes_shapes_and_every_byte(small_chunks):
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
                [("w", weight.t())]]
    assert len({base, *(digest_of(named) for named in variants)}) == 1 + len(variants)
