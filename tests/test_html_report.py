"""The HTML debug report, rendered by a real browser (Debian's headless Chromium): every check reads
the DOM the page's script built, not the HTML text Kiln wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import kiln
from kiln import models
from kiln.cli import main as cli
from kiln.compiler import capture
from kiln.models.zoo import ZOO
from tests.passes.test_manager import PIPELINE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz (apt-get install graphviz)"),
]


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: "Element | None") -> None:
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, id_: str) -> "Element":
        return next(e for e in self.walk() if e.attrs.get("id") == id_)

    def all(self, tag: str | None = None, cls: str | None = None) -> list["Element"]:
        return [e for e in self.walk() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)]

    def content(self) -> str:
        return self.text + "".join(child.content() for child in self.children)


class DomTree(HTMLParser):
    VOID = {"meta", "input", "br", "img", "link", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        if tag not in self.VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        element = self.current
        while element is not None and element.tag != tag:
            element = element.parent
        if element is not None and element.parent is not None:
            self.current = element.parent

    def handle_data(self, data):
        self.current.text += data


def rendered(page: Path, fragment: str = "") -> Element:
    """The DOM of `page` once headless Chromium has run its script."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom",
         f"file://{page.resolve()}" + (f"#{fragment}" if fragment else "")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    tree = DomTree()
    tree.feed(result.stdout)
    body = tree.root.all("body")[0]
    assert body.attrs.get("data-rendered") == "yes", "the page's script did not finish"
    return tree.root


def boxes_of(graph) -> int:
    """The IR's nodes as the report draws them: every node but the weights (folded into their op)."""
    return sum(1 for node in graph.module.graph.nodes if node.op != "get_attr")


@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn_debug")
    model, x = models.SmallCNN().eval(), torch.randn(2, 3, 32, 32)
    compiled = kiln.compile(model, (x,), debug_dir=folder)
    return folder, compiled, model, x


def test_the_cnn_report_renders_its_passes_graphs_diff_and_profile(cnn_report):
    folder, compiled, model, x = cnn_report
    page = folder / "report.html"
    rows = compiled.report.rows
    last_kiln = [r for r in rows if r.stage == "kiln"][-1]
    dom = rendered(page, f"graph={last_kiln.index}")

    assert len(dom.find("passes").all("tr", "pass-row")) == len(rows)
    # the graph after the last graph pass: one box per node of the IR the backend received
    assert len(dom.find("graph-view").all("g", "node")) == boxes_of(compiled.graph)

    # fold_batch_norm's diff: every batch norm of the captured graph is marked removed
    fold = next(r for r in rows if r.name == "fold_batch_norm")
    dom = rendered(page, f"diff={fold.index}")
    captured, _, _ = capture(model, (x,))
    batch_norms = {n.name for n in captured.nodes if n.op == "call_function" and "batch_norm" in str(n.target)}
    assert batch_norms
    removed = {g.attrs["id"].removeprefix("node-") for g in dom.find("diff-before").all("g", "removed")}
    assert batch_norms <= removed
    assert not dom.find("diff-after").all("g", "removed")

    # the profile: every kernel the module runs, each with a time
    profile = json.loads((folder / "profile.json").read_text())
    kernel_rows = dom.find("profile").all("tr", "kernel-row")
    assert [r.all("td")[0].content() for r in kernel_rows] == [k["kernel"] for k in profile["kernels"]]
    assert all(float(r.all("td")[2].content()) > 0 for r in kernel_rows)
    # ... and the Kiln nodes each computes: every convolution and linear layer of the graph is some kernel's
    computed = {name for r in kernel_rows for name in r.all("td")[8].content().split(", ")}
    layers = {n.name for n in compiled.graph.nodes if n.op == "call_function" and ("conv" in str(n.target) or "linear" in str(n.target))}
    assert layers and layers <= computed
    assert set(profile_names := {k["kernel"] for k in profile["kernels"]}) <= set(compiled.executable.kernel_info)
    assert profile_names

    # the fused kernels drawn after the schedule row: a box for each, every profiled kernel among them
    schedule = next(r for r in rows if r.name == "ScheduleCPU")
    drawn = rendered(page, f"graph={schedule.index}").find("graph-view")
    kernel_boxes = json.loads(next(folder.glob(f"{schedule.index:03d}_tvm_kernels.graph.json")).read_text())["nodes"]
    assert len(drawn.all("g", "node")) == len(kernel_boxes)
    assert all(name in drawn.content() for name in profile_names)


def test_the_transformer_encoder_report_draws_every_node(tmp_path):
    model, inputs = ZOO["transformer_encoder"]()
    compiled = kiln.compile(model, inputs, debug_dir=tmp_path)
    last_kiln = [r for r in compiled.report.rows if r.stage == "kiln"][-1]
    dom = rendered(tmp_path / "report.html", f"graph={last_kiln.index}")
    assert len(dom.find("passes").all("tr", "pass-row")) == len(compiled.report.rows)
    assert len(dom.find("graph-view").all("g", "node")) == boxes_of(compiled.graph)


def test_a_large_graph_is_also_drawn_one_box_per_block(tmp_path):
    """A 6-layer encoder: past COLLAPSE_ABOVE boxes, each layer also folds into one box."""
    from kiln.models.encoder import EncoderConfig, TransformerEncoder
    from kiln.report.graph_view import COLLAPSE_ABOVE, graph_data

    model = TransformerEncoder(EncoderConfig(vocab=100, hidden=32, heads=2, layers=6, intermediate=64, max_positions=16)).eval()
    inputs = (torch.randint(0, 100, (1, 16)),)
    compiled = kiln.compile(model, inputs, target="eager", debug_dir=tmp_path)
    last_kiln = [r for r in compiled.report.rows if r.stage == "kiln"][-1]
    nodes = graph_data(compiled.graph)["nodes"]
    assert len(nodes) > COLLAPSE_ABOVE
    blocks = {n["module"] for n in nodes if n["module"]}
    loose = sum(1 for n in nodes if not n["module"])
    assert any(block.split(".")[-1].isdigit() for block in blocks)  # repeated blocks, by index
    dom = rendered(tmp_path / "report.html", f"graph={last_kiln.index}&collapse=1")
    assert len(dom.find("graph-view").all("g", "node")) == len(blocks) + loose


def test_the_drift_plot_marks_the_planted_bad_pass(tmp_path):
    model, x = models.SmallCNN().eval(), torch.randn(2, 3, 32, 32)
    kiln.compile(model, (x,), target="eager", passes=PIPELINE, debug_dir=tmp_path)
    dom = rendered(tmp_path / "report.html")
    marked = dom.find("drift-plot").all("circle", "over-tolerance")
    assert [c.attrs["data-pass"] for c in marked] == ["test_plant_wrong_bias"]
    assert "first over: test_plant_wrong_bias" in dom.find("drift-plot").content()
    assert dom.find("drift-plot").all("line", "tolerance")


def test_a_compression_pass_row_opens_on_what_each_layer_kept(tmp_path):
    model, x = models.SmallCNN().eval(), torch.randn(2, 3, 32, 32)
    compiled = kiln.compile(model, (x,), prune=kiln.Prune(ratio=0.5), calibration=[(x,)], debug_dir=tmp_path)
    prune = next(r for r in compiled.report.rows if r.name == "prune_channels")
    dom = rendered(tmp_path / "report.html", f"open={prune.index}")
    (chart,) = dom.find("passes").all("svg", "kept-chart")
    assert len(chart.all("rect", "layer-bar")) == len(prune.layers) > 0
    assert "50% kept" in chart.content() and "drift after this pass" in chart.content()


def test_a_compiled_modules_report_writes_its_own_page(cnn_report, tmp_path):
    """cm.report.html(path): the table, the drift plot and the profile, without a debug directory."""
    _, compiled, _, x = cnn_report
    page = compiled.report.html(tmp_path / "report.html", profile=compiled.profile(x))
    dom = rendered(page)
    assert len(dom.find("passes").all("tr", "pass-row")) == len(compiled.report.rows)
    assert dom.find("profile").all("tr", "kernel-row") and dom.find("drift-plot").all("circle", "drift-point")
    assert "no graph kept" in dom.find("graph-view").content()


def test_kiln_report_rewrites_the_page_with_another_tolerance(cnn_report, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(cnn_report[0], folder)
    (folder / "report.html").unlink()
    assert cli(["report", str(folder), "--tolerance", "1e-9"]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "report.html")
    assert "tolerance 1e-9" in rendered(folder / "report.html").find("drift-plot").content()


def test_the_profile_adds_up_to_the_module_latency():
    """A CNN of ~0.8 ms: the kernels' times, each timed apart, add up to the module's latency
    within 10% (what they leave out is the VM's own work between calls). The machine is shared:
    a profile taken while another process holds both cores (the VM's thread pool then waits for
    them between kernels) is not the module's, so three are taken and one must agree."""
    model, x = models.SmallCNN().eval(), torch.randn(8, 3, 64, 64)
    compiled = kiln.compile(model, (x,))
    profiles = [compiled.profile(x, runs=20) for _ in range(3)]
    for profile in profiles:
        assert profile.kernels and all(k.ms > 0 and k.calls >= 1 for k in profile.kernels)
        assert abs(sum(k.share for k in profile.kernels) - 1) < 1e-6
    assert any(abs(p.kernels_ms - p.latency_ms) <= 0.10 * p.latency_ms for p in profiles), [p.table() for p in profiles]
