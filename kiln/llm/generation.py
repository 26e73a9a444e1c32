"""Token generation over a compiled LM's prefill, decode step and cache writer: numpy and TVM's
runtime only, so the same loop runs in Kiln and, copied as `run.py`, in an exported bundle on a
board (ids in, ids out: the tokenizer is the user's).

    python3 run.py --prompt-ids 1,2,3 --max-new-tokens 32 [--sample --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0]

The KV cache is allocated once on the device (per layer, [batch, kv_heads, head_dim, slots] for
keys, [batch, kv_heads, slots, head_dim] for values), and every step's new rows are written into it in place; no tensor is allocated per token beyond the ids and the logits read
back. Stopping follows `transformers`: a row that produced an end-of-sequence id continues with the
pad id, and generation ends when every row has.
"""

import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import tvm

if __package__:  # in Kiln
    from kiln.backends.tvm.runtime.bundle_runner import index_problem
else:  # run.py of an exported bundle, beside its copy of Kiln's runner helpers (a runtime-only TVM: no Kiln)
    from bundle_runner import index_problem


class GenerationError(ValueError):
    """Inputs the compiled LM cannot take (Kiln raises its own error class in its place)."""


class Generator:
    """prefill: VM function (ids [B,T/16,16], start [], pad [B]); decode: (ids [B,1], start, pad,
    keys×L, values×L); both → (logits [B,V], new keys [L,B,H,T,D], new values); write: VM function
    (keys×L, values×L, new keys, new values, start) writing in place."""

    def __init__(self, prefill: Callable, decode: Callable, write: Callable, layout: dict, device,
                 eos_token_ids: Sequence[int] = (), pad_token_id: Optional[int] = None,
                 error: type = GenerationError, index_checks: Optional[dict] = None) -> None:
        self.prefill, self.decode, self.write = prefill, decode, write
        # per step ("prefill", "decode"): the guarded indices its last output reports (kiln/backends/tvm/index_guard.py)
        self.index_checks = dict(index_checks or {})
        self.layout, self.device, self.error = layout, device, error
        self.eos_token_ids = set(eos_token_ids)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (min(self.eos_token_ids) if self.eos_token_ids else 0)
        batch, heads, slots, dim = layout["batch"], layout["kv_heads"], layout["slots"], layout["head_dim"]
        # zeros, not empty: a masked slot's weight is 0, and 0 × a NaN left in memory is NaN;
        # keys transposed, [B,H,D,S], the layout q·Kᵀ reads without a copy
        key_zeros, value_zeros = np.zeros((batch, heads, dim, slots), layout["dtype"]), np.zeros((batch, heads, slots, dim), layout["dtype"])
        self.keys = [tvm.runtime.tensor(key_zeros, device=device) for _ in range(layout["layers"])]
        self.values = [tvm.runtime.tensor(value_zeros, device=device) for _ in range(layout["layers"])]
        self.timings: dict = {}

    def _tensor(self, array: np.ndarray):
        return tvm.runtime.tensor(np.require(array, requirements="C"), device=self.device)  # (ascontiguousarray makes 0-d 1-d)

    def _step(self, part: str, ids: np.ndarray, start: int, pad: np.ndarray, *cache) -> np.ndarray:
        start_tensor = self._tensor(np.array(start, dtype="int64"))
        outputs = list(getattr(self, part)(self._tensor(ids), start_tensor, self._tensor(pad), *cache))
        if self.index_checks.get(part):  # a token id past the vocabulary: refused before the cache is written
            problem = index_problem(self.index_checks[part], outputs.pop().numpy().tolist())
            if problem:
                raise self.error(problem)
        logits, new_keys, new_values = outputs
        self.write(*self.keys, *self.values, new_keys, new_values, start_tensor)
        return logits.numpy()

    def _prompt(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray, int]:
        """The prompt as [compiled batch, T] ids, each row's left padding, and the rows given."""
        ids = np.asarray(input_ids, dtype="int64")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise self.error(f"input_ids must be [batch, length] token ids with length > 0; got shape {list(ids.shape)}")
        rows, length = ids.shape
        batch = self.layout["batch"]
        if rows > batch:
            raise self.error(f"{rows} prompts, but this LM is compiled for batch {batch}: compile with batch_size={rows}")
        if attention_mask is None:
            pad = np.zeros(rows, dtype="int64")
        else:
            mask = np.asarray(attention_mask, dtype="int64").reshape(ids.shape)
            pad = (np.cumsum(mask, axis=1) == 0).sum(axis=1).astype("int64")
            if ((np.arange(length)[None] >= pad[:, None]) != mask.astype(bool)).any():
                raise self.error("attention_mask must be left padding (zeros, then ones, in every row): "
                                 "pad prompts on the left for generation")
        if (ids < 0).any() or (ids >= self.layout["vocab"]).any():
            raise self.error(f"input_ids hold ids outside the vocabulary [0, {self.layout['vocab']})")
        extra = -length % self.layout.get("prompt_multiple", 1)  # left padding up to the prefill's multiple
        ids = np.concatenate([np.zeros((rows, extra), dtype="int64"), ids], axis=1)
        pad = pad + extra
        filler = batch - rows  # unused rows of the compiled batch: all padding, never read
        ids = np.concatenate([ids, np.zeros((filler, ids.shape[1]), dtype="int64")])
        pad = np.concatenate([pad, np.full(filler, ids.shape[1], dtype="int64")])
        return ids, pad, rows

    def stream(self, input_ids, max_new_tokens: int, attention_mask=None, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None) -> Iterator[np.ndarray]:
        """Yields the next token of every prompt row ([rows] int64), one step at a time."""
        ids, pad, rows = self._prompt(input_ids, attention_mask)
        length = ids.shape[1]
        if max_new_tokens < 1 or length + max_new_tokens > self.layout["slots"]:
            raise self.error(f"a prompt of {length} tokens (padded to a multiple of {self.layout.get('prompt_multiple', 1)}) and "
                             f"max_new_tokens={max_new_tokens} need {length + max_new_tokens} cache slots; this LM is compiled "
                             f"with max_length={self.layout['slots']}")
        choose = _sampler(temperature, top_k, top_p, seed) if do_sample else _greedy
        done = np.zeros(ids.shape[0], dtype=bool)
        done[rows:] = True
        started = time.perf_counter()
        multiple = self.layout.get("prompt_multiple", 1)
        logits = self._step("prefill", ids.reshape(ids.shape[0], -1, multiple) if multiple > 1 else ids, 0, pad)
        self.timings = {"prompt_tokens": int(np.asarray(input_ids).shape[-1]), "first_token_s": None, "decode_s": 0.0, "decoded": 0}
        for produced in range(max_new_tokens):
            token = np.where(done, self.pad_token_id, choose(logits))
            if produced == 0:
                self.timings["first_token_s"] = time.perf_counter() - started
            yield token[:rows]
            done |= np.isin(token, list(self.eos_token_ids))
            if done.all() or produced == max_new_tokens - 1:
                return
            tick = time.perf_counter()
            logits = self._step("decode", token[:, None], length + produced, pad, *self.keys, *self.values)
            self.timings["decode_s"] += time.perf_counter() - tick
            self.timings["decoded"] += 1

    def generate(self, input_ids, max_new_tokens: int, **options) -> np.ndarray:
        """The prompts followed by their generated tokens, [rows, length + generated]."""
        ids = np.asarray(input_ids, dtype="int64")
        ids = ids[None] if ids.ndim == 1 else ids
        tokens = list(self.stream(ids, max_new_tokens, **options))
        return np.concatenate([ids, np.stack(tokens, axis=1)], axis=1) if tokens else ids


def _greedy(logits: np.ndarray) -> np.ndarray:
    return logits.argmax(axis=-1).astype("int64")


def _sampler(temperature: float, top_k: int, top_p: float, seed: Optional[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Sampling as `transformers` filters it (temperature, then top-k, then top-p, keeping at least
    one token), drawn from numpy's generator: the same seed gives the same tokens on any machine."""
    if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
        raise GenerationError(f"sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0; got {temperature}, {top_p}, {top_k}")
    rng = np.random.default_rng(seed)

    def choose(logits: np.ndarray) -> np.ndarray:
        scores = logits.astype("float64") / temperature
        if top_k:
            kth = np.sort(scores, axis=-1)[:, -min(top_k, scores.shape[-1])][:, None]
            scores = np.where(scores < kth, -np.inf, scores)
        if top_p < 1:
            order = np.argsort(scores, axis=-1)
            ordered = np.take_along_axis(scores, order, axis=-1)
            probs = np.exp(ordered - ordered[:, -1:])
            cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
            removed = cumulative <= 1 - top_p
            removed[:, -1] = False
            np.put_along_axis(scores, order, np.where(removed, -np.inf, ordered), axis=-1)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.array([rng.choice(len(row), p=row) for row in probs], dtype="int64")

    return choose


# --- the exported bundle's runner ------------------------------------------------------------

BUNDLE_MANIFEST = "kiln_lm.json"


def load_generator(folder: Path) -> Generator:
    """The bundle in `folder`, its libraries checked against the manifest's checksums first."""
    from bundle_runner import load_verified_module  # the bundle's copy of Kiln's runner helpers

    manifest = json.loads((folder / BUNDLE_MANIFEST).read_text())
    functions, device = {}, None
    for part in ("prefill", "decode", "write"):
        functions[part], device = load_verified_module(folder, manifest[part], manifest)
    return Generator(functions["prefill"], functions["decode"], functions["write"], manifest["layout"], device,
                     manifest.get("eos_token_ids", ()), manifest.get("pad_token_id"),
                     index_checks={part: manifest[part].get("index_checks", []) for part in ("prefill", "decode")})


def main(argv: Sequence[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Generate token ids with an exported Kiln LM bundle")
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    generator = load_generator(Path(__file__).resolve().parent)
    prompt = [int(token) for token in args.prompt_ids.split(",") if token.strip()]
    tokens = [int(t[0]) for t in generator.stream([prompt], args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed)]
    print(",".join(str(t) for t in tokens))
    print(describe_timings(generator.timings), file=sys.stderr)


def describe_timings(timings: dict) -> str:
    rate = timings["decoded"] / timings["decode_s"] if timings.get("decode_s") else float("nan")
    return (f"prompt {timings['prompt_tokens']} tokens, first token {timings['first_token_s'] * 1e3:.1f} ms, "
            f"decode {rate:.1f} tokens/s ({timings['decoded']} steps)")


if __name__ == "__main__":
    main(sys.argv[1:])
