"""`kiln generate`: token ids from a decoder LM (a transformers folder, compiled here, or an LM .kiln)."""

from __future__ import annotations

import argparse
import sys

import torch


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


def add_command(commands) -> None:
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
