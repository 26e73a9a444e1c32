"""`torch.compile(model, backend="kiln")`: each Dynamo graph compiled by Kiln agrees with eager."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import kiln.dynamo
from kiln.models.hf_corpus import CORPUS
from kiln.models.zoo import ZOO
from tests.conftest import assert_matches, eager


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test sees only its own graphs: Dynamo forgets what it compiled, Kiln its list."""
    torch._dynamo.reset()
    kiln.dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_by_kiln(model: nn.Module, **options):
    return torch.compile(model, backend="kiln", options=options or None)


def kiln_graphs() -> list[kiln.dynamo.KilnGraph]:
    graphs = kiln.dynamo.graphs()
    assert graphs and all(graph.module is not None for graph in graphs), kiln.dynamo.report()
    return graphs


@pytest.mark.parametrize("name", ["cnn_batch_norm", "transformer_encoder"])
def test_zoo_models_match_eager_through_one_kiln_graph(name):
    model, inputs = ZOO[name]()
    with torch.no_grad():
        got = compiled_by_kiln(model)(*inputs)
    assert_matches(got, eager(model, *inputs))
    assert len(kiln_graphs()) == 1
    assert "codegen" in [row.name for row in kiln_graphs()[0].module.report.rows]


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_hugging_face_models_match_eager_in_inference_mode(name):
    model, args, kwargs = CORPUS[name]()
    with torch.inference_mode():
        got = compiled_by_kiln(model)(*args, **kwargs).last_hidden_state
        want = model(*args, **kwargs).last_hidden_state
    assert_matches(got, want)
    assert len(kiln_graphs()) == 1


class Branching(nn.Module):
    """A data-dependent Python branch: Dynamo breaks the graph at the `if`."""

    def __init__(self) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.positive = nn.Linear(8, 4)
        self.negative = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.convolution(x)).relu().mean((2, 3)) - 0.3
        if features.sum() > 0:
            return self.positive(features)
        return self.negative(features).sigmoid()


def test_a_graph_break_gives_kiln_graphs_on_both_sides_of_it():
    model = Branching().eval()
    fast = compiled_by_kiln(model)
    with torch.no_grad():
        for scale in (5.0, -5.0):  # one input down each branch
            x = torch.randn(2, 3, 8, 8) + scale
            assert_matches(fast(x), eager(model, x))
    names = [graph.name for graph in kiln_graphs()]
    assert len(names) >= 3, names  # the graph before the `if`, and the code after each branch
    assert all("test_torch_compile.py:" in name for name in names), names  # where each graph starts


def test_dynamic_batch_at_three_sizes_reuses_one_dynamic_kiln_graph():
    model, _ = ZOO["mlp"]()
    fast = compiled_by_kiln(model)
    with torch.no_grad():
        for batch in (2, 3, 5):
            x = torch.randn(batch, 64)
            assert_matches(fast(x), eager(model, x))
    graphs = kiln_graphs()
    assert len(graphs) == 2, [graph.name for graph in graphs]  # static at 2, then dynamic for 3 and 5
    dynamic = graphs[-1].module.signature.inputs[0]
    assert isinstance(dynamic.shape[0], str) and dynamic.shape[1] == 64, dynamic.describe()


def test_quantize_option_shows_its_row_in_the_report():
    model, inputs = ZOO["mlp"]()
    with torch.no_grad():
        got = compiled_by_kiln(model, quantize="dynamic_int8", threads=1)(*inputs)
    assert_matches(got, eager(model, *inputs), tolerance=5e-2)
    rows = {row.name: row for row in kiln_graphs()[0].module.report.rows}
    assert "quantize_dynamic_int8" in rows and rows["quantize_dynamic_int8"].changes > 0
    assert "quantize_dynamic_int8" in kiln.dynamo.report()


class Spectrum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs() + 1


def test_an_op_kiln_refuses_falls_back_to_eager_with_a_warning_naming_it():
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled_by_kiln(Spectrum())(x)
    assert torch.equal(got, Spectrum()(x))
    messages = [str(w.message) for w in caught if str(w.message).startswith("kiln:")]
    assert any("runs eagerly" in m and "_fft_r2c" in m for m in messages), messages
    (graph,) = kiln.dynamo.graphs()
    assert graph.module is None and "_fft_r2c" in graph.fallback


def test_fallback_false_makes_the_refusal_an_error():
    with pytest.raises(Exception) as raised:
        compiled_by_kiln(Spectrum(), fallback=False)(torch.randn(4, 16))
    cause = getattr(raised.value, "inner_exception", raised.value)
    assert isinstance(cause, kiln.UnsupportedOpError) and "_fft_r2c" in str(cause)


def test_a_model_in_training_mode_is_refused_as_inference_only():
    model = Branching().train()
    with pytest.raises(Exception) as raised:
        compiled_by_kiln(model)(torch.randn(2, 3, 8, 8))
    cause = getattr(raised.value, "inner_exception", raised.value)
    assert isinstance(cause, kiln.FrontendError)
    assert "training mode" in str(cause) and "model.eval()" in str(cause)


def test_an_unknown_option_is_named():
    with pytest.raises(Exception) as raised:
        compiled_by_kiln(Branching().eval(), quantise="int8")(torch.randn(2, 3, 8, 8))
    cause = getattr(raised.value, "inner_exception", raised.value)
    assert isinstance(cause, kiln.KilnError) and "quantise" in str(cause)


def test_the_backend_is_found_through_its_entry_point_without_importing_kiln():
    script = (
        "import sys, torch\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()\n"
        "x = torch.randn(3, 8)\n"
        "with torch.no_grad():\n"
        "    assert 'kiln' not in sys.modules\n"
        "    got = torch.compile(model, backend='kiln')(x)\n"
        "    assert 'kiln' in sys.modules and torch.allclose(got, model(x), atol=1e-5)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_a_target_this_machine_cannot_run_is_refused_not_called():
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs the aarch64 cross toolchain (Debian package g++-aarch64-linux-gnu)")
    with pytest.raises(Exception) as raised:
        compiled_by_kiln(nn.Linear(8, 4).eval(), target="rpi4", fallback=False)(torch.randn(2, 8))
    cause = getattr(raised.value, "inner_exception", raised.value)
    assert isinstance(cause, kiln.TargetError) and "runs each graph in this process" in str(cause)
