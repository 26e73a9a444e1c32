"""`kiln.compile_causal_lm`: a `transformers` decoder LM compiled for generation — a prefill over
the prompt and a one-token decode step, both over one static KV cache on the device.

    lm = kiln.compile_causal_lm(model, max_length=512, target="llvm", quantize="weight_int4")
    ids = lm.generate(input_ids, max_new_tokens=32)          # greedy, as model.generate(do_sample=False)
    for token in lm.stream(input_ids, max_new_tokens=32): ...
    lm.save("lm.kiln"); lm = kiln.load("lm.kiln"); lm.export("bundle/")
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from kiln import artifact
from kiln.backends import resolve_target
from kiln.backends.targets import ResolvedTarget
from kiln.backends.tvm.runtime import bundle_runner
from kiln.backends.tvm.runtime.bundle import refuse_unwritable
from kiln.backends.tvm.runtime.executable import TVMExecutable, _device
from kiln.backends.tvm.runtime.threads import pool_size, use_threads
from kiln.compiler import compile as kiln_compile
from kiln.errors import ArtifactError, InputMismatchError, TargetError, stage
from kiln.llm import generation
from kiln.llm.cache_writer import build_cache_writer
from kiln.llm.families import CacheLayout, cache_layout, check_family, sliding_windows
from kiln.llm.step import CausalLMStep
from kiln.report.records import Report

KIND = "causal_lm"
PROMPT_MULTIPLE = 16  # a vector of AVX-512 floats: the prefill's attention tiles its key columns too
PARTS = ("prefill", "decode", "write")


def compile_causal_lm(
    model: torch.nn.Module,
    max_length: int = 512,
    *,
    target: str | dict[str, Any] = "llvm",
    quantize: str | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    verbose: bool = False,
) -> "CompiledCausalLM":
    """Compile a `transformers` causal LM (Llama, Mistral, Qwen2/3, Gemma, Phi-3, GPT-2, GPT-NeoX,
    OPT) for generation of up to `max_length` tokens (prompt + generated) per row, `batch_size`
    rows at a time (fewer rows are fine; prompts of different lengths are left-padded).
    `quantize="weight_int8"` / `"weight_int4"` stores the linear weights as integers: decoding
    reads every weight once per token, so fewer weight bytes are what makes it faster."""
    family = check_family(model)
    if not isinstance(max_length, int) or max_length <= PROMPT_MULTIPLE:
        raise InputMismatchError(f"max_length={max_length!r}: give the most tokens (prompt + generated) a row may hold, "
                                 f"more than {PROMPT_MULTIPLE} (prompts are padded to a multiple of {PROMPT_MULTIPLE})")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputMismatchError(f"batch_size={batch_size!r}: give the number of prompts generated together, at least 1")
    resolved = resolve_target(target)
    if resolved.backend != "tvm":
        raise TargetError(f"compile_causal_lm needs a TVM target ('llvm', 'cuda', a board); got '{resolved.name}'")
    layout = cache_layout(model, batch_size, max_length, PROMPT_MULTIPLE)
    step = CausalLMStep(model, max_length, sliding_windows(model))
    batch, heads, slots, dim = layout.shape()[1:]
    cache = [torch.zeros(batch, heads, dim, slots) for _ in range(layout.layers)] + [torch.zeros(batch, heads, slots, dim) for _ in range(layout.layers)]
    pad = torch.zeros(batch_size, dtype=torch.long)
    # prompts are left-padded to a multiple of PROMPT_MULTIPLE tokens and passed as [B, blocks, 16],
    # so the prefill's matmuls know their row count divides by 16 and tile several rows at a time
    # (a dynamic count tiles one row)
    most_blocks = (max_length - 1) // PROMPT_MULTIPLE
    example_blocks = min(2, most_blocks)
    # one block at most: a static prompt shape (torch.export has no dim of a single size)
    blocks = torch.export.Dim("prompt_blocks", min=1, max=most_blocks) if most_blocks > 1 else None
    prompt = torch.randint(0, layout.vocab, (batch_size, example_blocks, PROMPT_MULTIPLE), generator=torch.Generator().manual_seed(0))
    options = dict(target=target, quantize=quantize, threads=threads, verbose=verbose)
    with stage("compiling the prefill step"):
        prefill = kiln_compile(step, (prompt, torch.tensor(0), pad), **options,
                               dynamic_shapes={"input_ids": {1: blocks}, "start": None, "pad": None} if blocks else None)
    with stage("compiling the decode step"):
        decode = kiln_compile(step, (prompt[:, 0, :1], torch.tensor(prompt[0].numel()), pad, *cache), **options)
    with stage("building the KV-cache writer"):
        writer = build_cache_writer(resolved, *layout.shape(), dtype=layout.dtype)
    config = model.generation_config if getattr(model, "generation_config", None) is not None else model.config
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad_id = config.pad_token_id
    return CompiledCausalLM(family, layout, resolved, threads, {"prefill": prefill.executable, "decode": decode.executable, "write": writer},
                            {"prefill": prefill.report, "decode": decode.report}, eos_ids, None if pad_id is None else int(pad_id))


class CompiledCausalLM:
    """A compiled decoder LM: `generate` and `stream` token ids, `save`/`export` it."""

    def __init__(self, family: str, layout: CacheLayout, target: ResolvedTarget, threads: int | None,
                 parts: dict[str, TVMExecutable], reports: dict[str, Report], eos_token_ids: Sequence[int],
                 pad_token_id: int | None) -> None:
        self.family, self.layout, self.target, self.threads = family, layout, target, threads
        self.parts, self.reports = parts, reports
        self.eos_token_ids, self.pad_token_id = list(eos_token_ids), pad_token_id
        self._generator: generation.Generator | None = None

    @property
    def report(self) -> Report:
        """The decode step's compile report (the prefill's is in `.reports["prefill"]`)."""
        return self.reports["decode"]

    @property
    def timings(self) -> dict[str, Any]:
        """The last generation's prompt length, time to first token and decode time."""
        return dict(self._generator.timings) if self._generator is not None else {}

    def _runtime(self) -> generation.Generator:
        if self._generator is None:
            functions = {part: executable._vm_main() for part, executable in self.parts.items()}
            self._generator = generation.Generator(functions["prefill"], functions["decode"], functions["write"], self.layout.to_json(),
                                                   _device(self.target), self.eos_token_ids, self.pad_token_id, InputMismatchError,
                                                   self._index_checks())
        if self.target.device == "cpu":
            use_threads(self.threads or pool_size())
        return self._generator

    def _index_checks(self) -> dict[str, list[dict[str, Any]]]:
        return {part: [check.to_json() for check in self.parts[part].index_checks] for part in ("prefill", "decode")}

    def stream(self, input_ids: Any, max_new_tokens: int = 32, *, attention_mask: Any = None, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Iterator[torch.Tensor]:
        """The next token of every prompt row ([rows] int64), one decode step at a time."""
        options = dict(attention_mask=_numpy(attention_mask), do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        with stage("generation"):  # a TVM runtime error arrives as Kiln's, naming the stage
            try:
                for token in self._runtime().stream(_numpy(input_ids), max_new_tokens, **options):
                    yield torch.from_numpy(token)
            except generation.GenerationError as error:
                raise InputMismatchError(str(error)) from None

    def generate(self, input_ids: Any, max_new_tokens: int = 32, **options: Any) -> torch.Tensor:
        """The prompts followed by the generated tokens, [rows, length + generated], as
        `model.generate` returns them (greedy unless `do_sample=True`)."""
        ids = torch.as_tensor(_numpy(input_ids))
        ids = ids[None] if ids.dim() == 1 else ids
        tokens = list(self.stream(ids, max_new_tokens, **options))
        return torch.cat([ids, torch.stack(tokens, dim=1)], dim=1)

    # --- artifacts ----------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        return {"kind": KIND, "family": self.family, "layout": self.layout.to_json(),
                "eos_token_ids": self.eos_token_ids, "pad_token_id": self.pad_token_id}

    def save(self, path: str | Path, sign_with: Any = None) -> None:
        """One `.kiln` artifact with the three modules; `kiln.load` restores it."""
        from kiln.module import artifact_header

        manifest = {**artifact_header(self.target, self.threads),
                    "reports": {name: report.to_json() for name, report in self.reports.items()}, **self._manifest()}

        def save_files(folder: Path) -> None:
            for part, executable in self.parts.items():
                (folder / part).mkdir()
                executable.save(folder / part)

        artifact.write_artifact(path, manifest, save_files, sign_with)

    def export(self, folder: str | Path) -> Path:
        """A folder for the board: the three libraries, kiln_lm.json, and `run.py`, which generates
        with only numpy and TVM's runtime (`python3 run.py --prompt-ids 1,2,3 --max-new-tokens 32`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"target": self.target.name, "device": self.target.device,
                                    "architecture": self.target.architecture, "cpu_features": self.target.cpu_features, **self._manifest()}
        for part, executable in self.parts.items():
            name = f"{part}.so"
            path = folder / name
            refuse_unwritable(path)
            executable.write_shared_library(path)
            stem = f"{part}_weights" if executable.weights else None
            if stem is not None:
                for weight_file in bundle_runner.weight_files(stem):
                    refuse_unwritable(folder / weight_file)
                executable.write_weights(folder, stem)
            manifest[part] = {"library": name, "library_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "weights": stem,
                              "weights_sha256": bundle_runner.weights_sha256(folder, stem) if stem else None,
                              "index_checks": [check.to_json() for check in executable.index_checks]}
        (folder / generation.BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.copyfile(generation.__file__, folder / "run.py")
        shutil.copyfile(bundle_runner.__file__, folder / "bundle_runner.py")
        return folder

    def __repr__(self) -> str:
        return (f"<kiln.CompiledCausalLM {self.family} {self.target.name} batch {self.layout.batch}, "
                f"max_length {self.layout.slots}, {self.layout.layers} layers>")


def restore(manifest: dict[str, Any], folder: Path) -> CompiledCausalLM:
    """The LM a `.kiln` artifact of kind causal_lm holds (called by `kiln.load`)."""
    target = ResolvedTarget(manifest["target"]["name"], manifest["backend"], manifest["target"]["tvm"])
    threads = manifest.get("threads")
    try:
        layout = CacheLayout(**manifest["layout"])
        parts = {part: TVMExecutable.load(folder / part, target, threads) for part in PARTS}
        reports = {name: Report.from_json(report) for name, report in manifest["reports"].items()}
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"the LM artifact's manifest is incomplete: {error}") from None
    return CompiledCausalLM(manifest["family"], layout, target, threads, parts, reports,
                            manifest.get("eos_token_ids", []), manifest.get("pad_token_id"))


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
