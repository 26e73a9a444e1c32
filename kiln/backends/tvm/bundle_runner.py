"""Runs an exported Kiln bundle on the board with nothing but TVM's runtime and numpy.

    python3 run.py                      # random inputs; prints output shapes and the latency
    python3 run.py inputs.npz out.npz   # inputs by name (see kiln_bundle.json), outputs saved

Copied verbatim into every bundle by `CompiledModule.export`; it must not import Kiln.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine  # not tvm.relax: the board may have only the runtime library

HERE = Path(__file__).resolve().parent


def main(argv):
    manifest = json.loads((HERE / "kiln_bundle.json").read_text())
    device = tvm.cuda(0) if manifest["device"] == "cuda" else tvm.cpu(0)
    vm = VirtualMachine(tvm.runtime.load_module(str(HERE / manifest["library"])), device)
    if argv:
        given = np.load(argv[0])
        arrays = [given[spec["name"]] for spec in manifest["inputs"]]
    else:
        rng = np.random.default_rng(0)
        arrays = [
            rng.standard_normal([d if isinstance(d, int) else 1 for d in spec["shape"]]).astype(spec["dtype"])
            for spec in manifest["inputs"]
        ]
    vm.set_input("main", *[tvm.runtime.tensor(a, device=device) for a in arrays])
    vm.invoke_stateful("main")
    outputs = vm.get_outputs("main")
    outputs = [outputs] if isinstance(outputs, tvm.runtime.Tensor) else list(outputs)
    results = {spec["name"]: out.numpy() for spec, out in zip(manifest["outputs"], outputs)}
    for name, value in results.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
    if len(argv) > 1:
        np.savez(argv[1], **results)
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=10)
    print(f"latency: {timer('main').median * 1e3:.2f} ms (median of 10) on target {manifest['target']}")


if __name__ == "__main__":
    main(sys.argv[1:])
