"""Decoder-LM generation: Hugging Face eager `generate`, `generate` with a static cache and
`torch.compile`, and Kiln fp32 / weight-only int8 / int4, one process, interleaved medians.

    python benchmarks/llm.py [--models 100m,500m] [--threads 1,2] [--rounds 3]
    # writes benchmarks/results/llm.md

Llama-style models from config (random weights: nothing can be downloaded): ~100M parameters
(768 wide, 12 layers, GQA 12/4 heads, 32k vocabulary, tied embeddings) and ~500M (Qwen2.5-0.5B's
shape: 896 wide, 24 layers, 14/2 heads, 152k vocabulary). Prompt 128 tokens, 64 new, batch 1.
Time to first token is the prompt's forward and the first token; decode tokens/s is over the
remaining 63 steps. The physical limit beside each is the weight bytes one decode step reads
(the decode graph's weights: every linear weight and the tied output head) ÷ the machine's
read bandwidth, measured here (a sum over a 1 GiB tensor on the same threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.run import cpu_description  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "llm.md"
PROMPT, NEW_TOKENS, MAX_LENGTH = 128, 64, 192
CONFIGS = {
    "100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, tie_word_embeddings=True),
    "500m": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
}


def build_model(name: str):
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIGS[name], max_position_embeddings=512)).eval()
    model.generation_config.eos_token_id = None  # random weights: every run makes all 64 tokens
    model.generation_config.pad_token_id = 0
    return model


def read_bandwidth(threads: int) -> float:
    """GB/s of a sum over 1 GiB of float32 on `threads` threads (best of 5)."""
    torch.set_num_threads(threads)
    data = torch.ones(1 << 28)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = max(best, data.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


class HuggingFace:
    """`model.generate`, eager or with a static cache and torch.compile (compiled on first use)."""

    def __init__(self, model, compiled: bool) -> None:
        self.model, self.compiled = model, compiled
        self.forward = torch.compile(model.forward, dynamic=False) if compiled else None

    def run(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if self.compiled:
            options["cache_implementation"] = "static"
        eager_forward = self.model.forward
        if self.compiled:
            self.model.forward = self.forward
        try:
            with torch.no_grad():
                return self.model.generate(ids, **options)
        finally:
            self.model.forward = eager_forward

    def measure(self, ids: torch.Tensor, threads: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        self.run(ids, 1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        self.run(ids, NEW_TOKENS)
        total = time.perf_counter() - start
        return first, (NEW_TOKENS - 1) / max(total - first, 1e-9)


class Kiln:
    def __init__(self, model, quantize: str | None) -> None:
        import kiln

        start = time.perf_counter()
        self.lm = kiln.compile_causal_lm(model, max_length=MAX_LENGTH, quantize=quantize)
        self.compile_s = time.perf_counter() - start
        final = [row for row in self.lm.report.rows if row.stats is not None][-1]
        self.weight_bytes = final.stats.param_bytes

    def measure(self, ids: torch.Tensor, threads: int) -> tuple[float, float]:
        self.lm.threads = threads
        self.lm.generate(ids, max_new_tokens=NEW_TOKENS)
        timings = self.lm.timings
        return timings["first_token_s"], timings["decoded"] / timings["decode_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="100m,500m")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    cpu, _ = cpu_description()
    lines = [f"# Decoder-LM generation ({cpu}; prompt {PROMPT}, {NEW_TOKENS} new tokens, batch 1)", "",
             "`python benchmarks/llm.py`; medians of interleaved rounds; TTFT = time to first token.", ""]
    bandwidth = {threads: read_bandwidth(threads) for threads in thread_counts}
    lines.append("Read bandwidth (1 GiB sum): " + ", ".join(f"{t} thread{'s' if t > 1 else ''} {bw:.1f} GB/s" for t, bw in bandwidth.items()))
    for name in args.models.split(","):
        model = build_model(name)
        params = sum(p.numel() for p in model.parameters())
        ids = torch.randint(3, model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
        print(f"[llm] {name}: {params / 1e6:.0f}M parameters; compiling", file=sys.stderr, flush=True)
        contenders: dict[str, object] = {"HF eager": HuggingFace(model, False), "HF torch.compile, static cache": HuggingFace(model, True)}
        for label, quantize in (("Kiln fp32", None), ("Kiln weight int8", "weight_int8"), ("Kiln weight int4", "weight_int4")):
            contenders[label] = Kiln(model, quantize)
            print(f"[llm] {label}: compiled in {contenders[label].compile_s:.0f} s", file=sys.stderr, flush=True)
        reference = contenders["HF eager"].run(ids, NEW_TOKENS)
        agreement = {label: (c.lm.generate(ids, max_new_tokens=NEW_TOKENS) == reference).float().mean().item()
                     for label, c in contenders.items() if isinstance(c, Kiln)}
        for threads in thread_counts:
            for contender in contenders.values():
                contender.measure(ids, threads)  # warm-up (torch.compile compiles here)
            samples: dict[str, list[tuple[float, float]]] = {label: [] for label in contenders}
            for _ in range(args.rounds):
                for label, contender in contenders.items():
                    samples[label].append(contender.measure(ids, threads))
            medians = {label: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs)) for label, runs in samples.items()}
            eager_rate, compiled_rate = medians["HF eager"][1], medians["HF torch.compile, static cache"][1]
            fp32_rate = medians["Kiln fp32"][1]
            lines += ["", f"## {name} ({params / 1e6:.0f}M parameters), {threads} thread{'s' if threads > 1 else ''}", "",
                      "| | TTFT ms | decode tokens/s | × HF eager | × torch.compile | × Kiln fp32 | weight bytes/token | bandwidth reached | limit tokens/s | tokens = HF fp32 greedy |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for label, (first, rate) in medians.items():
                kiln_row = isinstance(contenders[label], Kiln)
                weight_bytes = contenders[label].weight_bytes if kiln_row else params * 4
                limit = bandwidth[threads] * 1e9 / weight_bytes
                lines.append(f"| {label} | {first * 1e3:.0f} | {rate:.1f} | {rate / eager_rate:.2f}× | {rate / compiled_rate:.2f}× | "
                             f"{rate / fp32_rate:.2f}× | {weight_bytes / 1e6:.0f} MB | {rate * weight_bytes / 1e9:.1f} GB/s | {limit:.0f} "
                             f"({limit / rate:.2f}× away) | {f'{agreement[label]:.0%}' if kiln_row else ''} |")
            print("\n".join(lines[-len(medians) - 4:]), file=sys.stderr, flush=True)
        del contenders, model
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
