"""The compile cache: a second compile of the same model loads the first's build, in any process."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import kiln
from kiln.background import wait_all as wait_for_stores
from kiln.cache import CompileCache
from kiln.cli import main as cli
from kiln.models.zoo import ZOO
from tests.conftest import assert_matches, eager

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("KILN_CACHE_DIR", str(folder))
    monkeypatch.setenv("KILN_CACHE", "on")
    return folder


def entries():
    """The cache's entries once this process has finished writing them (stores run in the background)."""
    wait_for_stores()
    return CompileCache().entries()


def rows(module) -> dict[str, object]:
    return {row.name: row for row in module.report.rows}


def assert_second_process_loads_from_cache(script: str, tmp_path: Path) -> None:
    """`script` (argv[1]: where to save its outputs; its last line: the report's cache notes) run
    in two processes one after the other: the second loads from the cache, outputs bit for bit."""
    notes = []
    for run in range(2):
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"out{run}.pt")], capture_output=True,
                                text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr[-2000:]
        notes.append(result.stdout.strip().splitlines()[-1])
    assert notes[0] == "[]" and "from cache" in notes[1], notes
    assert torch.equal(torch.load(tmp_path / "out0.pt"), torch.load(tmp_path / "out1.pt"))


def cnn():
    return ZOO["cnn_batch_norm"]()


def test_a_second_compile_loads_the_first_build_and_says_so(cache_dir):
    model, inputs = cnn()
    first = kiln.compile(model, inputs)
    assert "cache" not in rows(first) and len(entries()) == 1
    second = kiln.compile(model, inputs)
    assert rows(second)["cache"].note.startswith("from cache")
    assert rows(second)["cache"].drift.max_abs <= 1e-4 * eager(model, *inputs).abs().max().item()
    assert torch.equal(second(*inputs), first(*inputs))
    assert "codegen" in rows(second)  # the build's own rows stay in the report


def test_a_new_process_loads_the_build_with_identical_outputs(cache_dir, tmp_path):
    script = (
        "import sys, torch, kiln\n"
        "from kiln.models.zoo import ZOO\n"
        "model, inputs = ZOO['cnn_batch_norm']()\n"
        "module = kiln.compile(model, inputs)\n"
        "torch.save(module(*inputs), sys.argv[1])\n"
        "print([row.note for row in module.report.rows if row.name == 'cache'])\n"
    )
    assert_second_process_loads_from_cache(script, tmp_path)


def never_capture(*args, **kwargs):
    raise AssertionError("the model was captured: the fingerprint did not find its entry")


def test_a_warm_compile_finds_its_entry_by_the_model_fingerprint_without_capturing(cache_dir, monkeypatch):
    model, inputs = cnn()
    first = kiln.compile(model, inputs)
    wait_for_stores()
    monkeypatch.setattr(kiln.compiler, "capture", never_capture)
    second = kiln.compile(model, inputs)
    assert rows(second)["cache"].note.endswith("(model fingerprint)")
    assert rows(second)["cache"].drift.max_abs <= 1e-4 * eager(model, *inputs).abs().max().item()
    assert torch.equal(second(*inputs), first(*inputs))


OFFSET = 0.0  # read by Shifted.forward: a global the fingerprint cannot see


class Shifted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x) + OFFSET


def test_a_model_changed_where_its_fingerprint_cannot_see_is_captured_again(cache_dir, monkeypatch):
    """Same classes, weights and inputs, other numbers: the entry the fingerprint names disagrees
    with the eager model, so it is not used."""
    model, x = Shifted().eval(), torch.randn(4, 16)
    kiln.compile(model, (x,))
    wait_for_stores()
    monkeypatch.setattr(sys.modules[__name__], "OFFSET", 3.0)
    changed = kiln.compile(model, (x,))
    assert "cache" not in rows(changed)
    assert_matches(changed(x), eager(model, x))
    again = kiln.compile(model, (x,))  # the fingerprint now names the new build
    assert rows(again)["cache"].note.endswith("(model fingerprint)")


def test_a_model_with_a_forward_hook_is_captured_not_fingerprinted(cache_dir):
    model, inputs = cnn()
    model.register_forward_hook(lambda module, args, output: output * 2)
    kiln.compile(model, inputs)
    wait_for_stores()
    second = kiln.compile(model, inputs)
    assert "model fingerprint" not in rows(second)["cache"].note  # found by its captured graph instead
    assert_matches(second(*inputs), eager(model, *inputs))


def test_other_options_weights_or_targets_are_other_entries(cache_dir):
    model, inputs = ZOO["mlp"]()
    kiln.compile(model, inputs)
    kiln.compile(model, inputs, threads=1)
    kiln.compile(model, inputs, opt_level="O1")
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    changed = kiln.compile(model, inputs)
    assert "cache" not in rows(changed) and len(entries()) == 4
    assert_matches(changed(*inputs), eager(model, *inputs))


@pytest.mark.parametrize("member", ["files/module.so", "files/weights.bin"])
def test_a_corrupt_entry_is_detected_and_rebuilt(cache_dir, member):
    model, inputs = cnn()
    kiln.compile(model, inputs)
    (entry,) = entries()
    with zipfile.ZipFile(entry.path) as archive:
        info = archive.getinfo(member)
    data = bytearray(entry.path.read_bytes())
    middle = info.header_offset + 100 + info.file_size // 2  # inside the member (stored): its checksum no longer matches
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    entry.path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = kiln.compile(model, inputs)
    assert any("corrupt and is rebuilt" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert "cache" not in rows(rebuilt)
    assert_matches(rebuilt(*inputs), eager(model, *inputs))
    assert "cache" in rows(kiln.compile(model, inputs))  # the rebuilt entry is whole again


def test_an_entry_stored_under_another_key_is_not_trusted(cache_dir):
    mlp, mlp_inputs = ZOO["mlp"]()
    model, inputs = cnn()
    kiln.compile(mlp, mlp_inputs)
    (mlp_entry,) = entries()
    kiln.compile(model, inputs)
    cnn_entry = next(entry for entry in entries() if entry.path != mlp_entry.path)
    cnn_entry.path.write_bytes(mlp_entry.path.read_bytes())  # a whole artifact, but another model's
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        rebuilt = kiln.compile(model, inputs)
    assert "cache" not in rows(rebuilt)
    assert_matches(rebuilt(*inputs), eager(model, *inputs))


def test_two_processes_filling_the_cache_at_once_both_succeed(cache_dir, tmp_path):
    script = (
        "import sys, torch, kiln\n"
        "from kiln.models.zoo import ZOO\n"
        "model, inputs = ZOO['cnn_batch_norm']()\n"
        "torch.save(kiln.compile(model, inputs)(*inputs), sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"out{i}.pt")], env=env,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    model, inputs = cnn()
    for i in range(2):
        assert_matches(torch.load(tmp_path / f"out{i}.pt"), eager(model, *inputs))
    assert len(entries()) == 1
    assert not list(cache_dir.glob("??/.*.partial"))
    assert "cache" in rows(kiln.compile(model, inputs))


def test_least_recently_used_entries_go_when_the_cache_is_full(cache_dir, monkeypatch):
    mlp, mlp_inputs = ZOO["mlp"]()
    model, inputs = cnn()
    kiln.compile(mlp, mlp_inputs)
    (first,) = entries()
    monkeypatch.setenv("KILN_CACHE_SIZE", str(first.bytes + 1))  # room for one entry
    kiln.compile(model, inputs)
    (kept,) = entries()
    assert kept.path != first.path and not first.path.exists()


def test_a_cache_folder_others_may_write_is_not_used(cache_dir):
    cache_dir.mkdir(mode=0o700)
    cache_dir.chmod(0o777)
    model, inputs = ZOO["mlp"]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kiln.compile(model, inputs)
    assert any("not this user's alone" in str(w.message) for w in caught)
    assert not list(cache_dir.iterdir())


def test_debug_dir_and_cache_false_build_anew(cache_dir, tmp_path):
    model, inputs = ZOO["mlp"]()
    kiln.compile(model, inputs)
    assert "cache" not in rows(kiln.compile(model, inputs, cache=False))
    debugged = kiln.compile(model, inputs, debug_dir=tmp_path / "debug")
    assert "cache" not in rows(debugged) and list((tmp_path / "debug").glob("*"))


def test_cli_cache_info_and_clear(cache_dir, capsys):
    model, inputs = ZOO["mlp"]()
    kiln.compile(model, inputs)
    assert cli(["cache", "info"]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert cli(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out and not entries()


def test_torch_compile_in_a_new_process_loads_each_graph_from_the_cache(cache_dir, tmp_path):
    script = (
        "import sys, torch, kiln.dynamo\n"
        "from kiln.models.zoo import ZOO\n"
        "model, inputs = ZOO['cnn_batch_norm']()\n"
        "with torch.no_grad():\n"
        "    torch.save(torch.compile(model, backend='kiln')(*inputs), sys.argv[1])\n"
        "print([row.note for graph in kiln.dynamo.graphs() for row in graph.module.report.rows if row.name == 'cache'])\n"
    )
    assert_second_process_loads_from_cache(script, tmp_path)


def test_a_script_that_exits_right_after_compiling_still_fills_the_cache(cache_dir):
    script = "import kiln\nfrom kiln.models.zoo import ZOO\nmodel, inputs = ZOO['mlp']()\nkiln.compile(model, inputs)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "could not store" not in result.stderr, result.stderr[-2000:]
    assert len(entries()) == 1


class Scaled(torch.nn.Module):
    """`self.c` is a plain tensor attribute: torch.export lifts it as a constant, not a buffer."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = torch.tensor(c)

    def forward(self, x):
        return x * self.c


def test_a_plain_tensor_attribute_is_part_of_the_key(cache_dir):
    x = torch.randn(4)
    assert_matches(kiln.compile(Scaled(2.0), (x,))(x), 2 * x)
    assert_matches(kiln.compile(Scaled(3.0), (x,))(x), 3 * x)


def test_other_input_shapes_and_dtypes_are_other_entries(cache_dir):
    conv = torch.nn.Conv2d(3, 8, 3).eval()
    for size in (32, 48):
        x = torch.randn(1, 3, size, size)
        assert_matches(kiln.compile(conv, (x,))(x), eager(conv, x))
    weightless = Waves()  # the same module given float32, then float64 inputs
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 16, dtype=dtype)
        got = kiln.compile(weightless, (x,))(x)
        assert got.dtype == dtype
        assert_matches(got, eager(weightless, x))


class Waves(torch.nn.Module):
    def forward(self, x):
        return x.sin() * 2


def test_a_warm_start_has_the_graph_a_build_has(cache_dir):
    model, inputs = cnn()
    built = kiln.compile(model, inputs)
    wait_for_stores()
    warm = kiln.compile(model, inputs)
    assert "cache" in rows(warm)
    assert warm.graph is not None and warm.graph.text() == built.graph.text()


def test_a_model_without_a_source_file_compiles(cache_dir):
    namespace: dict = {"torch": torch}
    exec("class Doubled(torch.nn.Module):\n    def forward(self, x):\n        return x * 2\n", namespace)
    x = torch.randn(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: such a model is simply not fingerprinted
        assert_matches(kiln.compile(namespace["Doubled"](), (x,))(x), 2 * x)
    result = subprocess.run([sys.executable, "-c", "import torch, kiln\n"
                             "class M(torch.nn.Module):\n    def forward(self, x): return x + 1\n"
                             "print(kiln.compile(M(), (torch.zeros(2),))(torch.zeros(2)).tolist())"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "[1.0, 1.0]" in result.stdout, result.stderr[-2000:]


def test_a_loaded_entry_further_from_eager_than_its_build_is_dropped_and_rebuilt(cache_dir, monkeypatch):
    """An entry whose code is not the model's any more (planted here: served for another key)
    runs on the example inputs first; its drift exceeds its build's, so it is dropped."""
    first, x = Scaled(2.0), torch.randn(4)
    kiln.compile(first, (x,))
    wait_for_stores()
    (entry,) = entries()
    real_load = CompileCache.load
    with monkeypatch.context() as patch:
        patch.setattr(CompileCache, "load", lambda self, key: real_load(self, entry.path.name.removesuffix(".kiln")))
        rebuilt = kiln.compile(Scaled(3.0), (x,))
    assert_matches(rebuilt(x), 3 * x)
    assert "dropped and rebuilt" in rows(rebuilt)["dce"].note
    wait_for_stores()
    served = kiln.compile(Scaled(3.0), (x,))
    assert "cache" in rows(served)
    assert_matches(served(x), 3 * x)


def test_a_helper_in_another_file_changed_is_not_served_by_fingerprint(cache_dir, tmp_path, monkeypatch):
    """The fingerprint sees the model's classes; the files its forward ran are checked too."""
    helper = tmp_path / "kiln_test_helper.py"
    helper.write_text("def bend(x):\n    return x.clamp(max=100.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import kiln_test_helper

    class Bent(torch.nn.Module):
        def forward(self, x):
            return kiln_test_helper.bend(x) * 2

    x = torch.randn(5)  # far below the clamp: the change below does not show on these inputs
    kiln.compile(Bent(), (x,))
    wait_for_stores()
    helper.write_text("def bend(x):\n    return x.clamp(max=50.0)\n")
    os.utime(helper, ns=(0, 10**18))
    importlib.reload(kiln_test_helper)
    again = kiln.compile(Bent(), (x,))
    cache_row = rows(again).get("cache")
    assert cache_row is None or "model fingerprint" not in cache_row.note
    big = torch.full((5,), 70.0)
    assert_matches(again(big), Bent()(big))
