"""Kiln on an NVIDIA GPU: correctness against eager PyTorch and speed beside eager and torch.compile.

The modules are built on this machine for the GPU's architecture and exported as bundles
(`cm.export`, the same path an edge board takes); the GPU machine runs them with TVM's runtime
library alone, so it needs neither Kiln's compiler stack nor a matching PyTorch build.

    python benchmarks/gpu.py build OUT_DIR --arch sm_90 CASE...   # here; CASE = model:precision[:batch] (fp32,
                                                                  # fp16, int8; batch 1 unless given), or llm_small:fp32
                                                                  # / :weight_int8 / :weight_int4
    python benchmarks/gpu.py check OUT_DIR... --json RESULT.json  # on the GPU machine
    python benchmarks/gpu.py report RESULT.json...                # here: results/gpu.md

Every bundle carries its inputs and the eager float32 outputs computed here (CPU); on the GPU,
Kiln's outputs are compared with those, and eager PyTorch on the GPU is compared with them too (a
check that both machines built the same weights). Speed: interleaved medians in one process,
each call synchronized; torch.compile in its default mode and in "max-autotune-no-cudagraphs" (CUDA graphs
would time replays, not the kernels Kiln is compared on; `--compile-modes`). An `llm_small`
case is a Llama-style decoder LM (`kiln.compile_causal_lm`, small enough for one transfer): its
bundle's own generation loop runs on the GPU, its greedy tokens are compared with `transformers`'
greedy tokens computed here, and its time to first token and decode tokens/s are recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "gpu.md"
CHECK_FILE = "check.npz"
CASE_FILE = "case.json"
TIMED_MODELS = ("resnet18", "mobilenet_v2", "bert_like_1l")
# max |Δ| over the output's scale, as tests/conftest.py measures it; int8 against Kiln's own int8
# build for this CPU (the same integers), fp32 and fp16 against eager float32
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-4}


def _import_models():
    """kiln.models without kiln/__init__ (which needs TVM's compiler; the GPU machine has only its
    runtime): the zoo is plain PyTorch."""
    if "kiln" not in sys.modules:
        package = types.ModuleType("kiln")
        package.__path__ = [str(REPO / "kiln")]
        sys.modules["kiln"] = package
    import kiln.models as models

    return models


def example(name: str, batch: int = 1):
    """(model, inputs) of a case's model: the zoo's, plus a BERT-base-like encoder cut to one layer
    and a 1,000-token vocabulary so that its float32 bundle fits one transfer to the GPU machine
    (the embedding is a gather: its size does not change the work); `batch` copies of the first
    example along the batch axis."""
    models = _import_models()
    if name == "bert_like_1l":
        torch.manual_seed(0)
        config = models.EncoderConfig(layers=1, vocab=1000)
        model, inputs = models.TransformerEncoder(config).eval(), (torch.randint(0, 1000, (1, 128)),)
    else:
        model, inputs = models.ZOO[name]()
    return model, tuple(t[:1].repeat(batch, *[1] * (t.dim() - 1)) for t in inputs) if batch != 1 else inputs


LM_PROMPT, LM_NEW_TOKENS = 32, 32


def lm_example():
    """A Llama-style LM (4 layers, 256 wide, GQA 8/2 heads, 1,000-token vocabulary) and a prompt."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # every run makes all its tokens
    return model, torch.randint(3, 1000, (1, LM_PROMPT), generator=torch.Generator().manual_seed(0))


def _build_lm(out_dir: Path, target: str | dict[str, Any], case: str, precision: str) -> None:
    import kiln

    model, prompt = lm_example()
    start = time.perf_counter()
    lm = kiln.compile_causal_lm(model, max_length=LM_PROMPT + LM_NEW_TOKENS, target=target,
                                quantize=None if precision == "fp32" else precision)
    seconds = time.perf_counter() - start
    folder = lm.export(out_dir / case.replace(":", "-"))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=LM_NEW_TOKENS, do_sample=False)[:, LM_PROMPT:]
    np.savez(folder / CHECK_FILE, prompt=prompt.numpy(), expected=expected.numpy())
    (folder / CASE_FILE).write_text(json.dumps({"model": "llm_small", "kind": "lm", "precision": precision, "build_s": seconds}))
    size = sum(p.stat().st_size for p in folder.glob("*.so")) / 1e6
    print(f"{case}: built in {seconds:.1f} s, {size:.1f} MB", flush=True)


def check_lm_bundle(folder: Path, case: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The bundle's own generation loop (run.py) on its device: greedy tokens against the ones
    `transformers` made at build time (fp32 must equal them), then TTFT and decode tokens/s."""
    spec = importlib.util.spec_from_file_location(f"lm_{folder.name}", folder / "run.py")
    runner = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))  # run.py imports the bundle's bundle_runner.py
    spec.loader.exec_module(runner)
    generator = runner.load_generator(folder)
    data = np.load(folder / CHECK_FILE)
    record: dict[str, Any] = dict(case, bundle=folder.name)
    got = generator.generate(data["prompt"], LM_NEW_TOKENS)[:, LM_PROMPT:]
    record["token_agreement"] = float((got == data["expected"]).mean())
    record["matches"] = record["token_agreement"] == 1.0 or case["precision"] != "fp32"
    firsts, rates = [], []
    for _ in range(repeats):
        generator.generate(data["prompt"], LM_NEW_TOKENS)
        firsts.append(generator.timings["first_token_s"])
        rates.append(generator.timings["decoded"] / generator.timings["decode_s"])
    record["ttft_ms"] = float(np.median(firsts)) * 1e3
    record["decode_tokens_per_s"] = float(np.median(rates))
    return record


def _flat_outputs(result: Any) -> list[torch.Tensor]:
    return list(torch.utils._pytree.tree_leaves(result))


# ---- here: build bundles ---------------------------------------------------------------------


def build(out_dir: Path, target: str | dict[str, Any], cases: list[str]) -> None:
    import kiln

    for case in cases:
        name, precision, *batch = case.split(":")
        if name == "llm_small":
            _build_lm(out_dir, target, case, precision)
            continue
        batch_size = int(batch[0]) if batch else 1
        model, inputs = example(name, batch_size)
        options = {"quantize": None if precision == "fp32" else precision, "calibration": [inputs] if precision == "int8" else None}
        start = time.perf_counter()
        compiled = kiln.compile(model, inputs, target=target, **options)
        seconds = time.perf_counter() - start
        folder = compiled.export(out_dir / case.replace(":", "-"))
        with torch.no_grad():
            reference = _flat_outputs(model(*inputs))
        if precision == "int8":  # the same integer layers on this CPU: what the GPU's must equal
            reference = _flat_outputs(kiln.compile(model, inputs, **options)(*inputs))
        arrays = {f"input{i}": t.numpy() for i, t in enumerate(inputs)}
        arrays |= {f"reference{i}": t.numpy() for i, t in enumerate(reference)}
        np.savez(folder / CHECK_FILE, **arrays)
        (folder / CASE_FILE).write_text(json.dumps({"model": name, "precision": precision, "batch": batch_size, "build_s": seconds}))
        size = (folder / "module.so").stat().st_size / 1e6
        print(f"{case}: built in {seconds:.1f} s, {size:.1f} MB", flush=True)


# ---- on the GPU machine: check and time ------------------------------------------------------


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float().cpu(), want.float()
    return (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)


def _synchronized(run: Callable[[], object], device: str) -> Callable[[], object]:
    def call():
        result = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return call


def _kiln_runner(folder: Path) -> Callable[..., list[torch.Tensor]]:
    """Kiln's module as the bundle's own runner (run.py, TVM's runtime only) loads it; torch tensors
    in and out through DLPack."""
    import tvm

    spec = importlib.util.spec_from_file_location(f"bundle_{folder.name}", folder / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    main = runner.load_bundle(folder)[0]

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        result = main(*[tvm.runtime.from_dlpack(t) for t in inputs])
        flat = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return [torch.from_dlpack(t) for t in flat]

    return run


def _torch_contenders(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], compile_modes: list[str], device: str
) -> dict[str, Any]:
    """Eager, and torch.compile in each of `compile_modes` with its compile time."""
    contenders: dict[str, Any] = {"eager": (model, 0.0)}
    for mode in compile_modes:
        label = "torch.compile" if mode == "default" else f"torch.compile {mode}"
        torch._dynamo.reset()
        compiled = torch.compile(model, mode=mode)
        start = time.perf_counter()
        _synchronized(lambda: [compiled(*inputs) for _ in range(2)], device)()
        contenders[label] = (compiled, time.perf_counter() - start)
    return contenders


@torch.no_grad()
def check_bundle(folder: Path, repeats: int, compile_modes: list[str]) -> dict[str, Any]:
    case = json.loads((folder / CASE_FILE).read_text())
    if case.get("kind") == "lm":
        return check_lm_bundle(folder, case, max(3, repeats // 20))
    device = json.loads((folder / "kiln_bundle.json").read_text())["device"]  # "cpu" for a dry run here
    data = np.load(folder / CHECK_FILE)
    inputs = [torch.from_numpy(data[k]).clone().to(device) for k in sorted(k for k in data.files if k.startswith("input"))]
    reference = [torch.from_numpy(data[k]) for k in sorted(k for k in data.files if k.startswith("reference"))]
    precision = case["precision"]
    kiln_run = _kiln_runner(folder)
    record: dict[str, Any] = dict(case, bundle=folder.name)
    record["kiln_error"] = max(_relative_error(a, b) for a, b in zip(kiln_run(*inputs), reference))
    record["tolerance"] = TOLERANCE[precision]
    record["matches"] = record["kiln_error"] <= TOLERANCE[precision]

    model, _ = example(case["model"], case.get("batch", 1))
    model = model.to(device)
    torch_inputs = tuple(inputs)
    if precision in ("fp16", "int8"):  # PyTorch has no int8 GPU path: int8 is timed against its fp16
        model = model.half()
        torch_inputs = tuple(t.half() if t.is_floating_point() else t for t in inputs)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    record["eager_error"] = max(_relative_error(a, b) for a, b in zip(_flat_outputs(model(*torch_inputs)), reference))
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults again for timing: TF32 convolutions, full-precision matmuls

    timed = case["model"] in TIMED_MODELS
    contenders = _torch_contenders(model, torch_inputs, compile_modes if timed else [], device)
    record["compile_s"] = {label: seconds for label, (_, seconds) in contenders.items()}
    if timed:
        from kiln.timing import interleaved_medians

        runs = {"kiln": _synchronized(lambda: kiln_run(*inputs), device)}
        for label, (module, _) in contenders.items():
            runs[label] = _synchronized(lambda module=module: module(*torch_inputs), device)
        medians = interleaved_medians(runs, repeats=repeats, warmup=5, calls_per_turn=6)
        record["ms"] = {label: seconds * 1e3 for label, seconds in medians.items()}
    return record


def check(folders: list[Path], result_path: Path, repeats: int, compile_modes: list[str]) -> int:
    _import_models()
    gpu = torch.cuda.get_device_properties(0).name if torch.cuda.is_available() else "none (dry run)"
    header = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}
    records: list[dict[str, Any]] = []
    for folder in folders:
        for bundle in [folder] if (folder / CASE_FILE).exists() else sorted(p.parent for p in folder.glob(f"*/{CASE_FILE}")):
            try:
                record = check_bundle(bundle, repeats, compile_modes)
            except Exception as error:  # one broken case must not hide the others' results
                traceback.print_exc()
                record = {"bundle": bundle.name, "error": f"{type(error).__name__}: {error}"}
            records.append(record)
            print(json.dumps(record), flush=True)
            result_path.write_text(json.dumps({"machine": header, "records": records}, indent=1))
    return 0 if all(r.get("matches") for r in records) else 1


# ---- here: the report ------------------------------------------------------------------------


def _merged(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per bundle: where a bundle was checked twice (again with torch.compile), the run
    that timed more contenders."""
    best: dict[str, dict[str, Any]] = {}
    for record in (r for result in results for r in result["records"]):
        kept = best.get(record["bundle"])
        if kept is None or len(record.get("ms", {})) > len(kept.get("ms", {})):
            best[record["bundle"]] = record
    return sorted(best.values(), key=lambda r: (r.get("model", r["bundle"]), r.get("precision", ""), r.get("batch", 1)))


def report(result_paths: list[Path]) -> None:
    results = [json.loads(p.read_text()) for p in result_paths]
    machine = results[0]["machine"]
    records = _merged(results)
    RESULTS.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1))
    lines = [
        "# Kiln on an NVIDIA GPU",
        "",
        f"GPU: {machine['gpu']}; PyTorch {machine['torch']} (CUDA {machine['cuda']}) on the GPU machine. "
        "Kiln modules built on the development machine (no GPU) for sm_90 and exported as bundles; the GPU machine "
        "ran them with TVM's runtime library alone (`python benchmarks/gpu.py`; raw records in gpu.json). "
        "ONNX Runtime's CUDA provider is not in these tables: the GPU machine has only ONNX Runtime's CPU build, "
        "and its GPU wheel is too large to carry there.",
        "",
        "## Correctness: max |Δ| over the output's scale, against eager float32 computed on the CPU "
        "(int8: against Kiln's int8 build for the CPU, the same integer layers)",
        "",
        "| model | precision | Kiln | eager PyTorch on the GPU | tolerance | Kiln matches |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['bundle']} | — | failed: {r['error']} | | | no |")
            continue
        if r.get("kind") == "lm":
            continue
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['kiln_error']:.1e} | {r['eager_error']:.1e} | "
            f"{r['tolerance']:.0e} | {'yes' if r['matches'] else 'NO'} |"
        )
    timed = [r for r in records if "ms" in r]
    contenders = list(dict.fromkeys(label for r in timed for label in r["ms"] if label != "kiln"))  # eager, then each mode timed
    lines += [
        "",
        "## Speed: median ms per call, interleaved in one process (in brackets: time over Kiln's)",
        "",
        "PyTorch with its defaults (TF32 convolutions, float32 matmuls in full precision); Kiln's float32 uses no "
        "tensor cores. — : not measured (device time ran out: torch.compile's max-autotune mode tuned ResNet-18 "
        "for over 6 minutes of the 15 lent, so later runs timed eager and the default mode only).",
        "",
        "| model | precision | batch | Kiln | " + " | ".join(contenders) + " | Kiln build s (CPU) | torch.compile s |",
        "|---|---|---|---|" + "---|" * len(contenders) + "---|---|",
    ]
    for r in timed:
        ms, kiln_ms = r["ms"], r["ms"]["kiln"]
        cells = [f"{ms[c]:.3f} ({ms[c] / kiln_ms:.2f}×)" if c in ms else "—" for c in contenders]
        compile_s = r["compile_s"].get("torch.compile")
        lines.append(
            f"| {r['model']} | {r['precision']} | {r.get('batch', 1)} | {kiln_ms:.3f} | " + " | ".join(cells)
            + f" | {r['build_s']:.0f} | {f'{compile_s:.0f}' if compile_s is not None else '—'} |"
        )
    generated = [r for r in records if r.get("kind") == "lm" and "error" not in r]
    if generated:
        lines += ["", f"## Generation: Llama-style LM (llm_small), prompt {LM_PROMPT}, {LM_NEW_TOKENS} new tokens, the bundle's run.py", "",
                  "| precision | greedy tokens = transformers' (CPU) | TTFT ms | decode tokens/s | Kiln build s (CPU) |", "|---|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['token_agreement']:.0%} | {r['ttft_ms']:.2f} | {r['decode_tokens_per_s']:.0f} | {r['build_s']:.0f} |"
                  for r in generated]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("out", type=Path)
    build_parser.add_argument("cases", nargs="+")
    build_parser.add_argument("--arch", default="sm_90", help="the GPU's CUDA architecture; 'host' builds for this CPU (a dry run of check)")
    check_parser = commands.add_parser("check")
    check_parser.add_argument("folders", type=Path, nargs="+")
    check_parser.add_argument("--json", type=Path, required=True)
    check_parser.add_argument("--repeats", type=int, default=20)
    check_parser.add_argument(
        "--compile-modes", default="default,max-autotune-no-cudagraphs",
        help="torch.compile modes to time, comma-separated ('' for none; max-autotune tuned ResNet-18 for 6 of the 15 minutes lent)"
    )
    report_parser = commands.add_parser("report")
    report_parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out, "llvm" if args.arch == "host" else {"kind": "cuda", "arch": args.arch}, args.cases)
        return 0
    if args.command == "check":
        return check(args.folders, args.json, args.repeats, [m for m in args.compile_modes.split(",") if m])
    report(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
