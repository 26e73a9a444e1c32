"""Kiln int8 vs Kiln fp32 vs ONNX Runtime fp32 and int8 vs OpenVINO, one process, interleaved medians.

    python benchmarks/quantization.py [--threads 1]
    # writes benchmarks/results/quantization.md

ResNet-18: Kiln static int8 (calibrated on 8 random batches) vs ONNX Runtime `quantize_static`
(QDQ, per-channel int8 weights, uint8 activations, the same calibration data). A BERT-like
encoder (4 layers, seq 128): Kiln dynamic int8 vs ONNX Runtime `quantize_dynamic`. Both add Kiln
`bf16` (AMX-BF16 tiles where the CPU has them) beside OpenVINO's default precision (bf16 on AMX). Agreement is
the cosine of each output to the fp32 eager model's; sizes are the files each runtime loads (the .onnx, the saved .kiln artifact). The BERT-like case
adds weight-only int8/int4 (Kiln) and ONNX Runtime's MatMulNBits int4 (blocks of 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from benchmarks.run import cpu_description, openvino_default_precision, openvino_runner, use_threads  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "quantization.md"


def _cosine(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)).flatten().double(), torch.as_tensor(np.asarray(b)).flatten().double()
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def contenders(name: str, model, inputs, calibration, mode: str, threads: int, work: Path) -> list[tuple[str, object, int, object]]:
    """(label, run, file bytes (the .onnx, or the saved .kiln artifact), output) per contender."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    import kiln

    fp32_path, int8_path = work / f"{name}.onnx", work / f"{name}_int8.onnx"
    with torch.no_grad():
        torch.onnx.export(model, inputs, str(fp32_path), dynamo=False, opset_version=17, input_names=["x"])
    if mode == "int8":

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"x": batch[0].numpy()} for batch in calibration])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    else:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    feeds = {"x": inputs[0].numpy()}
    rows = []
    runtimes = [("ONNX Runtime fp32", fp32_path), (f"ONNX Runtime {mode}", int8_path)]
    if mode != "int8":  # the weight-only contenders: ONNX Runtime's MatMulNBits int4, blocks of 32
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        int4_path = work / f"{name}_int4.onnx"
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(int4_path))
        runtimes.append(("ONNX Runtime weight_int4", int4_path))
    for label, path in runtimes:
        session = _ort_session(path, threads)
        rows.append((label, lambda s=session: s.run(None, feeds)[0], path.stat().st_size, session.run(None, feeds)[0]))
    for label, precision in (("OpenVINO fp32", "f32"), (f"OpenVINO default ({openvino_default_precision()})", None)):
        run, _ = openvino_runner(fp32_path, feeds, threads, precision)
        rows.append((label, run, fp32_path.stat().st_size, run()))
    modes = [mode, "bf16"] + (["weight_int8", "weight_int4"] if mode != "int8" else [])
    builds = [("Kiln fp32", kiln.compile(model, inputs, threads=threads))]
    builds += [(f"Kiln {m}", kiln.compile(model, inputs, threads=threads, quantize=m, calibration=calibration)) for m in modes]
    for label, compiled in builds:
        label += _units(compiled)
        compiled.save(work / "artifact.kiln")
        rows.append((label, lambda c=compiled: c(*inputs), (work / "artifact.kiln").stat().st_size, compiled(*inputs)))
    return rows


def _units(compiled) -> str:
    """' [vpdpbusd 17]': the dot-product units its compile report says its kernels ran on."""
    note = next((row.note for row in compiled.report.rows if row.name == "ScheduleCPU"), "")
    return f" [{note.split('dot-product kernels on ', 1)[1]}]" if "dot-product kernels on " in note else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    use_threads(args.threads)
    from kiln import models
    from kiln.timing import interleaved_medians

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    cases = [
        ("resnet18", models.resnet18().eval(), (torch.randn(1, 3, 224, 224),), [(torch.randn(1, 3, 224, 224),) for _ in range(8)], "int8"),
        ("bert_4l", models.TransformerEncoder(models.EncoderConfig(layers=4)).eval(), (torch.randint(0, 30522, (1, 128)),), None, "dynamic_int8"),
    ]
    cpu, _ = cpu_description()
    from kiln.backends.targets import host_features
    lines = ["# Quantization: Kiln vs ONNX Runtime and OpenVINO, int8 and fp32", "",
             f"{cpu} (extensions: {', '.join(sorted(host_features()))}), {args.threads} thread(s), one process, interleaved medians. "
             f"`python benchmarks/quantization.py --threads {args.threads}`. In brackets: the dot-product units a Kiln "
             "row's kernels ran on and how many kernels each, from its compile report. "
             "OpenVINO runs the fp32 ONNX file, in fp32 and in its default precision for this CPU.", ""]
    for name, model, inputs, calibration, mode in cases:
        print(f"[{name}] building", flush=True)
        rows = contenders(name, model, inputs, calibration, "int8" if mode == "int8" else "dynamic_int8", args.threads, work)
        with torch.no_grad():
            reference = model(*inputs)
        medians = interleaved_medians({label: run for label, run, _, _ in rows}, repeats=15)
        base = {label.split()[0]: medians[label] for label, *_ in rows if label.endswith("fp32")}
        base_size = {label.split()[0]: size for label, _, size, _ in rows if label.endswith("fp32")}
        lines += [f"## {name} ({mode})", "", "| contender | ms | vs its fp32 | cosine to fp32 eager | file | vs its fp32 |", "|---|---|---|---|---|---|"]
        for label, _, size, output in rows:
            family = label.split()[0]
            lines.append(f"| {label} | {1e3 * medians[label]:.2f} | {medians[label] / base[family]:.2f} | {_cosine(output, reference):.5f} | {size / 2**20:.1f} MiB | {size / base_size[family]:.2f} |")
        lines.append("")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
