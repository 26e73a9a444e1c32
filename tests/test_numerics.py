"""The numeric gate (kiln/numerics.py): a build that disagrees with eager is not returned, and the
error names the kernel or pass where the numbers broke."""

from __future__ import annotations

import pytest
import torch

import kiln
from kiln.backends.tvm.converters import CONVERTERS
from kiln.errors import NumericsError
from tests.conftest import assert_matches, eager


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def halved_gelu(node, importer):
    """A planted wrong lowering: GELU as x / 2."""
    from tvm import relax

    x = importer.env[node.args[0]]
    return importer.block_builder.emit(relax.op.multiply(x, relax.const(0.5, x.ty.dtype)))


@pytest.fixture
def planted_wrong_kernel(monkeypatch):
    monkeypatch.setitem(CONVERTERS, "gelu.default", halved_gelu)


def test_a_wrong_kernel_is_not_returned_and_is_named(planted_wrong_kernel):
    model, x = Mlp().eval(), torch.randn(4, 16)
    with pytest.raises(NumericsError) as caught:
        kiln.compile(model, (x,))
    message = str(caught.value)
    assert "code generation broke the numbers" in message
    assert "The first kernel that disagrees" in message and "gelu" in message, message


def test_verify_false_returns_the_build_and_its_report_shows_the_drift(planted_wrong_kernel):
    model, x = Mlp().eval(), torch.randn(4, 16)
    compiled = kiln.compile(model, (x,), verify=False)
    assert compiled.report.rows[-1].drift.max_rel > 1e-2


def test_a_looser_tolerance_is_the_users_to_give():
    model, x = Mlp().eval(), torch.randn(4, 16)
    assert_matches(kiln.compile(model, (x,), tolerance=1e-2)(x), eager(model, x))
    with pytest.raises(kiln.KilnError, match="tolerance"):
        kiln.compile(model, (x,), tolerance=-1.0)


def test_a_pass_that_breaks_its_promise_is_named(monkeypatch):
    from kiln.passes import registry

    fold = registry.PASSES["fold_constants"]

    def breaking(graph, **options):
        changes = fold.rewrite(graph, **options)
        for node in graph.nodes:
            if node.op == "get_attr":
                tensor = graph.constant(node)
                graph.module.register_buffer(str(node.target).replace(".", "_") + "_bent", tensor * 1.5)
                node.target = str(node.target).replace(".", "_") + "_bent"
                return 1
        return changes

    monkeypatch.setitem(registry.PASSES, "fold_constants", registry.Pass("fold_constants", fold.description, breaking,
                                                                         fold.options, preserves_values=True))
    model, x = Mlp().eval(), torch.randn(4, 16)
    with pytest.raises(kiln.PassError, match="pass 'fold_constants' promises to preserve values"):
        kiln.compile(model, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_a_module_refuses_nan_and_infinities_at_call_time_and_passes_every_finite_value(dtype):
    from kiln.signature import _all_finite

    finite = torch.tensor([0.0, -0.0, torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).tiny, 1.5], dtype=dtype)
    assert _all_finite(finite) and _all_finite(finite[::2])  # a strided view is read as it is
    for bad in (float("nan"), float("inf"), float("-inf")):
        tensor = finite.clone()
        tensor[3] = bad
        assert not _all_finite(tensor)


def test_a_nan_input_is_refused_naming_its_position_unless_allowed():
    model = torch.nn.Linear(4, 2).eval()
    x = torch.randn(3, 4)
    compiled = kiln.compile(model, (x,), cache=False)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(kiln.KilnError, match=r"nan at \(1, 2\)"):
        compiled(bad)
    allowed = kiln.compile(model, (x,), cache=False, allow_nonfinite_inputs=True)
    assert allowed(bad)[1].isnan().all()


def test_a_call_runs_no_pytorch_kernel_beside_the_module():
    """A call's checks dispatch no ATen op that computes: a parallel one (torch's isfinite on an
    input) left PyTorch's OpenMP threads spinning into the module's call, where they took the cores
    from its kernels (ResNet-18 at 2 threads ran 2x slower). Views and detach only."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU()).eval()
    x = torch.randn(256, 512)
    compiled = kiln.compile(model, (x,), cache=False)
    with Recorder() as recorder:
        compiled(x)
    assert set(recorder.ops) <= {"aten.detach.default", "aten.view.dtype", "aten.alias.default"}, recorder.ops
