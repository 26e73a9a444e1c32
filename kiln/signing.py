"""Signed artifacts: an Ed25519 signature (from `cryptography`, not hand-written) over an
artifact's manifest, which holds the SHA-256 of every file, so one signature covers them all.

Checksums alone detect corruption, not tampering: whoever rewrites a file rewrites its checksum.
A signature by a key the user trusts says who built the artifact, and `kiln.load(path,
trusted_keys=[...])` checks it before any file is unpacked or any library is mapped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from kiln.errors import ArtifactError

KeyLike = Any  # an Ed25519 key object, a PEM file's path, or (public keys) the key's hex string


def generate_key(private_path: str | Path, public_path: str | Path | None = None) -> Path:
    """A new Ed25519 key pair as PEM files (the private one readable by its owner only); returns
    the public key's path (default: the private one's with `.pub`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    private_path.touch(mode=0o600)
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path


def sign_manifest(manifest_bytes: bytes, key: KeyLike) -> bytes:
    """The signature member for these manifest bytes: the signer's public key and the signature."""
    from cryptography.hazmat.primitives import serialization

    private = _private_key(key)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return json.dumps({"algorithm": "ed25519", "public_key": public.hex(),
                       "signature": private.sign(manifest_bytes).hex()}).encode()


def verify_manifest(manifest_bytes: bytes, signature: bytes | None, trusted_keys: Sequence[KeyLike], source: Path) -> str:
    """The hex public key that signed `manifest_bytes`, or an ArtifactError: unsigned, malformed,
    signed by a key not trusted, or a signature that does not verify (a changed byte)."""
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise ArtifactError(f"{source}: the artifact is not signed, and trusted_keys asks for a signature; refused")
    signer, value = parse_signature(signature, source)
    trusted = {_public_bytes(key): key for key in trusted_keys}
    if signer not in trusted:
        raise ArtifactError(f"{source}: signed by key {signer.hex()[:16]}…, which is not among the trusted keys; refused")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(value, manifest_bytes)
    except InvalidSignature:
        raise ArtifactError(f"{source}: the signature does not match the artifact's contents (tampered?); refused") from None
    return signer.hex()


def parse_signature(signature: bytes, source: Path) -> tuple[bytes, bytes]:
    """(signer's public key, signature) of a signature member; not yet verified."""
    try:
        record = json.loads(signature)
        signer, value = bytes.fromhex(record["public_key"]), bytes.fromhex(record["signature"])
        if record.get("algorithm") != "ed25519" or len(signer) != 32 or len(value) != 64:
            raise ValueError("not an Ed25519 signature")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{source}: the artifact's signature is malformed or truncated ({error}); refused") from error
    return signer, value


def _private_key(key: KeyLike):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        loaded = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ArtifactError(f"{key}: not a readable Ed25519 private key ({error})") from error
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ArtifactError(f"{key}: not an Ed25519 private key")
    return loaded


def _public_bytes(key: KeyLike) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key.lower()):
        return bytes.fromhex(key)
    try:
        loaded = serialization.load_pem_public_key(Path(key).read_bytes())
    except (OSError, ValueError, TypeError) as error:
        raise ArtifactError(f"{key}: not a readable Ed25519 public key ({error})") from error
    if not isinstance(loaded, Ed25519PublicKey):
        raise ArtifactError(f"{key}: not an Ed25519 public key")
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
