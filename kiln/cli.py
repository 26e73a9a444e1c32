"""The `kiln` command line: demo, compile, generate, tune, report, artifacts (keygen, sign, verify, info), cache, passes, targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch


def _demo_models() -> dict[str, Callable[[], tuple[torch.nn.Module, tuple]]]:
    from kiln import models

    return {
        "resnet18": lambda: (models.resnet18(), (torch.randn(1, 3, 224, 224),)),
        "mobilenet_v2": lambda: (models.mobilenet_v2(), (torch.randn(1, 3, 224, 224),)),
        "cnn": lambda: (models.SmallCNN().eval(), (torch.randn(1, 3, 32, 32),)),
        "encoder": lambda: (
            models.TransformerEncoder(models.EncoderConfig(layers=2)),
            (torch.randint(0, 30522, (1, 128)),),
        ),
    }


def demo(args: argparse.Namespace) -> int:
    import kiln
    from kiln.backends.tvm.cpu.host import host_cpu
    from kiln.timing import interleaved_medians

    model, inputs = _demo_models()[args.model]()
    print(f"Compiling {args.model} for target '{args.target}' (opt level {args.opt_level})...", flush=True)
    compiled = kiln.compile(model, inputs, target=args.target, opt_level=args.opt_level, debug_dir=args.debug_dir, verbose=True)
    print(compiled.report.table())
    if args.debug_dir:
        print(f"\nIR after every pass, drift table and report: {args.debug_dir}/ (open {Path(args.debug_dir) / 'report.html'})")
    with torch.no_grad():
        expected = model(*inputs)
    error = (compiled(*inputs) - expected).abs().max().item()
    print(f"\nmax |kiln - eager| = {error:.2e}")
    with torch.no_grad():
        medians = interleaved_medians(
            {"eager": lambda: model(*inputs), "kiln": lambda: compiled(*inputs)}, repeats=args.repeats, warmup=1
        )
    cpu = host_cpu()
    print(f"latency on {cpu['mcpu']} ({', '.join(cpu['simd'])}), {torch.get_num_threads()} threads, median of {args.repeats}:")
    print(f"  PyTorch eager {medians['eager'] * 1000:9.2f} ms")
    print(f"  Kiln          {medians['kiln'] * 1000:9.2f} ms   ({medians['eager'] / medians['kiln']:.2f}x eager)")
    return 0


def tune(args: argparse.Namespace) -> int:
    import kiln

    model, inputs = _demo_models()[args.model]()
    summary = kiln.tune(
        model, inputs, trials=args.trials, target=args.target, threads=args.threads, tuning_dir=args.tuning_dir,
        remote=args.remote, tracker=args.tracker, key=args.key,
    )
    print(summary.table())
    print(f"\nkiln.compile of this model for target '{args.target}' now uses these schedules (see its ApplyTuningDatabase row).")
    return 0


def compile_command(args: argparse.Namespace) -> int:
    import kiln

    if args.model in _demo_models():
        model, inputs = _demo_models()[args.model]()
    else:
        model, inputs = args.model, ()  # an .onnx file: example inputs come from its input shapes
    compiled = kiln.compile(
        model, inputs, target=args.target, opt_level=args.opt_level, debug_dir=args.debug_dir, verbose=True,
        prune=kiln.Prune(ratio=args.prune) if args.prune else kiln.Prune(ratio=args.sparsity, structured=False) if args.sparsity else None,
        low_rank=kiln.LowRank(energy=args.low_rank) if args.low_rank else None, quantize=args.quantize,
    )
    print(compiled.report.table())
    if args.emit == "onnx":
        print(f"\noptimized graph written to {compiled.export_onnx(args.output)}")
    else:
        compiled.save(args.output)
        print(f"\ncompiled module written to {args.output} (kiln.load it)")
    return 0


def generate(args: argparse.Namespace) -> int:
    """Token ids from a decoder LM: a `transformers` model folder (compiled here, `-o` saves it) or
    an LM `.kiln` artifact; prints the new ids and the time to first token and tokens/s."""
    from pathlib import Path

    import kiln
    from kiln.errors import FrontendError, InputMismatchError
    from kiln.llm.generation import describe_timings

    try:
        prompt = [int(token) for token in args.prompt_ids.split(",") if token.strip()]
    except ValueError:
        raise InputMismatchError(f"--prompt-ids {args.prompt_ids!r}: give comma-separated integer token ids (e.g. 1,2,3)") from None
    source = Path(args.model)
    if source.is_dir():
        model = _pretrained_causal_lm(source)
        from kiln.llm.causal_lm import PROMPT_MULTIPLE

        padded = -(-len(prompt) // PROMPT_MULTIPLE) * PROMPT_MULTIPLE  # prompts are padded to whole blocks
        max_length = args.max_length or max(padded + args.max_new_tokens, PROMPT_MULTIPLE + 1)
        print(f"Compiling {type(model).__name__} for target '{args.target}' (max_length {max_length})...", file=sys.stderr, flush=True)
        lm = kiln.compile_causal_lm(model, max_length=max_length, target=args.target, quantize=args.quantize, verbose=True)
        if args.output:
            lm.save(args.output)
            print(f"compiled LM written to {args.output} (kiln generate {args.output} ...)", file=sys.stderr)
    else:
        lm = kiln.load(source)
        if not isinstance(lm, kiln.CompiledCausalLM):
            raise FrontendError(f"{source}: a compiled module, not a language model (save one with compile_causal_lm(...).save)")
    tokens = [int(token[0]) for token in lm.stream([prompt], args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                                                    top_k=args.top_k, top_p=args.top_p, seed=args.seed)]
    print(",".join(map(str, tokens)))
    print(describe_timings(lm.timings), file=sys.stderr)
    return 0


def _pretrained_causal_lm(folder) -> torch.nn.Module:
    from kiln.errors import FrontendError

    try:
        import transformers

        return transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    except (OSError, ValueError, KeyError) as error:
        raise FrontendError(f"{folder}: not a transformers causal-LM folder (config.json and weights, from save_pretrained): {error}") from None


def passes(_: argparse.Namespace) -> int:
    from kiln.passes import PASSES, PIPELINES

    width = max(map(len, PASSES))
    for name, registered in sorted(PASSES.items()):
        options = ", ".join(f"{k}={v!r}" for k, v in registered.options.items())
        print(f"{name.ljust(width)}  {registered.description}{f'  [options: {options}]' if options else ''}")
    print("\npipelines:")
    for level, pipeline in PIPELINES.items():
        print(f"  {level}: {' -> '.join(p if isinstance(p, str) else p[0] for p in pipeline) or '(no graph passes)'}")
    return 0


def targets(_: argparse.Namespace) -> int:
    from kiln.backends.targets import TARGETS, resolve_target

    width = max(map(len, TARGETS))
    for name, preset in TARGETS.items():
        print(f"{name.ljust(width)}  [{preset.backend}] {preset.description}")
        resolved = resolve_target(name)
        if resolved.tvm_target:
            print(f"{''.ljust(width)}  target: {resolved.tvm_target}")
        toolchain = resolved.toolchain
        if toolchain is not None:
            status = "installed" if toolchain.installed() else f"NOT installed: apt-get install {toolchain.package}"
            print(f"{''.ljust(width)}  cross toolchain: {toolchain.compiler} ({status})")
    return 0


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


def cache_command(args: argparse.Namespace) -> int:
    """`kiln cache info` / `kiln cache clear`: the compile cache's folder, entries and size."""
    from kiln import background
    from kiln.cache import CompileCache

    background.wait_all()
    cache = CompileCache()
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.root}")
    else:
        print(cache.describe())
    return 0


def report_command(args: argparse.Namespace) -> int:
    """`kiln report DIR`: (re)write the debug directory's report.html and print its path."""
    from kiln.report import write_report

    print(write_report(args.folder, tolerance=args.tolerance))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln deep-learning model compiler")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="compile a bundled model, print the per-pass report and its speed")
    run_demo.add_argument("--model", choices=sorted(_demo_models()), default="resnet18")
    run_demo.add_argument("--target", default="llvm")
    run_demo.add_argument("--opt-level", default="O3")
    run_demo.add_argument("--debug-dir", default=None, help="write the IR after every pass here")
    run_demo.add_argument("--repeats", type=int, default=5)
    run_demo.set_defaults(run=demo)
    run_tune = commands.add_parser("tune", help="tune a bundled model's kernels on this machine (resumable)")
    run_tune.add_argument("--model", choices=sorted(_demo_models()), default="resnet18")
    run_tune.add_argument("--trials", type=int, default=200, help="measured candidates in all, shared by FLOPs")
    run_tune.add_argument("--target", default="llvm")
    run_tune.add_argument("--threads", type=int, default=None)
    run_tune.add_argument("--tuning-dir", default=None, help="database root (default $KILN_TUNING_DIR or ~/.cache/kiln/tuning)")
    run_tune.add_argument("--remote", default=None, help="time candidates on the board whose TVM RPC server is at host:port")
    run_tune.add_argument("--tracker", default=None, help="time candidates on every board registered with this TVM RPC tracker (host:port)")
    run_tune.add_argument("--key", default=None, help="the boards' key at the tracker, e.g. rpi4")
    run_tune.set_defaults(run=tune)
    run_compile = commands.add_parser("compile", help="compile an .onnx file (or a bundled model) and save the result")
    run_compile.add_argument("model", help=f"an .onnx file, or one of: {', '.join(sorted(_demo_models()))}")
    run_compile.add_argument("-o", "--output", required=True, help="the .kiln artifact, or the .onnx file with --emit onnx")
    run_compile.add_argument("--target", default="llvm")
    run_compile.add_argument("--opt-level", default="O3")
    run_compile.add_argument("--emit", choices=["kiln", "onnx"], default="kiln", help="onnx: the graph after Kiln's passes, for Netron or other runtimes")
    run_compile.add_argument("--debug-dir", default=None, help="write the IR after every pass here")
    compression = run_compile.add_mutually_exclusive_group()
    compression.add_argument("--prune", type=float, default=None, metavar="RATIO", help="structured pruning: remove this fraction of channels and attention heads")
    compression.add_argument("--sparsity", type=float, default=None, metavar="RATIO", help="magnitude pruning: zero this fraction of the weights (smaller artifact)")
    run_compile.add_argument("--low-rank", type=float, default=None, metavar="ENERGY",
                             help="factorize linear/conv layers, keeping this fraction of each weight's energy (e.g. 0.9)")
    run_compile.add_argument("--quantize", choices=["dynamic_int8", "weight_int8", "weight_int4", "fp16", "bf16"], default=None,
                             help="quantization that needs no calibration data (static int8 does: use kiln.compile)")
    run_compile.set_defaults(run=compile_command)
    run_generate = commands.add_parser("generate", help="generate token ids with a decoder LM (a transformers folder or an LM .kiln)")
    run_generate.add_argument("model", help="a transformers model folder (save_pretrained), or a .kiln saved by compile_causal_lm")
    run_generate.add_argument("--prompt-ids", required=True, help="comma-separated token ids (the tokenizer is yours)")
    run_generate.add_argument("--max-new-tokens", type=int, default=32)
    run_generate.add_argument("--max-length", type=int, default=None, help="cache slots to compile for (default: the prompt, padded to 16-token blocks, + new tokens)")
    run_generate.add_argument("--target", default="llvm")
    run_generate.add_argument("--quantize", choices=["weight_int8", "weight_int4"], default=None)
    run_generate.add_argument("-o", "--output", default=None, help="save the compiled LM here (.kiln)")
    run_generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    run_generate.add_argument("--temperature", type=float, default=1.0)
    run_generate.add_argument("--top-k", type=int, default=0)
    run_generate.add_argument("--top-p", type=float, default=1.0)
    run_generate.add_argument("--seed", type=int, default=None)
    run_generate.set_defaults(run=generate)
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
    run_cache = commands.add_parser("cache", help="the compile cache: its folder, entries and size (info), or empty it (clear)")
    run_cache.add_argument("action", choices=["info", "clear"], nargs="?", default="info")
    run_cache.set_defaults(run=cache_command)
    run_report = commands.add_parser("report", help="write a debug directory's report.html (graphs, drift, profile) and print its path")
    run_report.add_argument("folder", help="a debug directory (kiln.compile(..., debug_dir=...) or kiln demo --debug-dir)")
    run_report.add_argument("--tolerance", type=float, default=1e-4, help="the drift plot's tolerance line (relative)")
    run_report.set_defaults(run=report_command)
    commands.add_parser("passes", help="list registered passes and pipelines").set_defaults(run=passes)
    commands.add_parser("targets", help="list target presets").set_defaults(run=targets)
    args = parser.parse_args(argv)
    from kiln.errors import KilnError

    try:
        return args.run(args)
    except KilnError as error:
        print(f"kiln: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
