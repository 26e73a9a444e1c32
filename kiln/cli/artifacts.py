"""`kiln keygen`, `sign`, `verify`, `info`: signing artifacts and reading what they say, loading none of their code."""

from __future__ import annotations

import argparse


def keygen(args: argparse.Namespace) -> int:
    from kiln.signing import generate_key

    public = generate_key(args.private_key)
    print(f"private key: {args.private_key} (keep it secret)\npublic key:  {public} (give it to whoever loads your artifacts)")
    return 0


def sign(args: argparse.Namespace) -> int:
    from kiln.artifact import sign_artifact

    sign_artifact(args.artifact, args.key)
    print(f"signed {args.artifact}")
    return 0


def verify(args: argparse.Namespace) -> int:
    from kiln.artifact import read_artifact

    # names, sizes, checksums and the signature, with no code loaded
    read_artifact(args.artifact, lambda manifest, folder, mapped: None, trusted_keys=args.trusted_key)
    print(f"{args.artifact}: intact, and signed by a trusted key")
    return 0


def info(args: argparse.Namespace) -> int:
    """What an artifact says about itself, without loading any of its code."""
    from kiln.artifact import read_manifest
    from kiln.errors import ArtifactError
    from kiln.signing import parse_signature

    manifest, signature = read_manifest(args.artifact)
    try:
        target = manifest.get("target", {})
        built_by = ", ".join(f"{k} {v}" for k, v in manifest.get("built_by", {}).items())
        inputs = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in manifest.get("signature", {}).get("inputs", []))
        lines = [
            f"{args.artifact}: Kiln artifact, format version {manifest['version']}",
            f"  target:   {target.get('name')} ({target.get('tvm') or manifest.get('backend')})",
            *([f"  model:    {manifest.get('family')} language model, cache {manifest.get('layout')}"] if manifest.get("kind") == "causal_lm" else []),
            f"  CPU:      needs {', '.join(target.get('cpu_features', [])) or 'no listed extension'}",
            f"  built by: {built_by or 'unrecorded'}",
            f"  inputs:   {inputs}",
            f"  files:    {', '.join(manifest.get('files', {}))}",
        ]
    except (AttributeError, KeyError, TypeError) as error:
        raise ArtifactError(f"{args.artifact}: the manifest does not have the fields of a Kiln artifact ({error!r})") from error
    signer = parse_signature(signature, args.artifact)[0].hex() if signature else None
    lines.append(f"  signed:   {'by ' + signer + ' (claimed; kiln verify checks it)' if signer else 'no'}")
    print("\n".join(lines))
    return 0


def add_command(commands) -> None:
    run_keygen = commands.add_parser("keygen", help="make an Ed25519 key pair for signing artifacts")
    run_keygen.add_argument("private_key", help="where to write the private key (the public one gets .pub)")
    run_keygen.set_defaults(run=keygen)
    run_sign = commands.add_parser("sign", help="sign a .kiln artifact with a private key")
    run_sign.add_argument("artifact")
    run_sign.add_argument("--key", required=True, help="the private key from kiln keygen")
    run_sign.set_defaults(run=sign)
    run_verify = commands.add_parser("verify", help="check a .kiln artifact is whole and signed by a trusted key (loads no code)")
    run_verify.add_argument("artifact")
    run_verify.add_argument("--trusted-key", action="append", required=True, help="a trusted public key (PEM file or hex); repeatable")
    run_verify.set_defaults(run=verify)
    run_info = commands.add_parser("info", help="print what a .kiln artifact records: target, who built it, inputs, signer")
    run_info.add_argument("artifact")
    run_info.set_defaults(run=info)
