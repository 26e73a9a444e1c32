"""The report as one self-contained HTML page: data as JSON, drawn by the page's own script.

Nothing is fetched: the styles, the script, the graphs (SVG laid out by Graphviz) and the data
are inlined, so the file works opened from disk and mailed around. The script builds every view
in the browser from the data (the pass table, sortable, each row opening on its per-layer lines;
the graph after a chosen pass, with pan, zoom and search; the before/after diff of a pass; the
drift plot on a log scale with the tolerance line and the first pass over it; the per-kernel
profile), which is what the browser tests check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# the page's styles and script, package data beside this module, inlined into every page
_STYLE = (Path(__file__).parent / "page.css").read_text()
_SCRIPT = (Path(__file__).parent / "page.js").read_text()


def render(data: dict[str, Any]) -> str:
    """The page for `data`: {"title", "tolerance", "passes" (Report.to_json rows), "first_over",
    "graphs" (pass index -> SVG), "diffs" (pass index -> removed/added/changed ids), "profile"}."""
    payload = json.dumps(data, default=str).replace("</", "<\\/")  # no "</script>" inside the data
    title = json.dumps(data.get("title", "Kiln report"))[1:-1].replace("<", "&lt;")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body>
<h1>{title}</h1>
<section id="passes-section"><h2>Passes</h2>
<p class="note">Kiln's graph passes and TVM's; click a column to sort, a row for its per-layer lines.</p>
<table id="passes"></table></section>
<section id="drift-section"><h2>Drift after every pass</h2>
<p class="note">max |Δ| relative to the output's scale, against the eager model, log scale; the dashed line is the tolerance.</p>
<div id="drift-plot"></div></section>
<section id="graph-section"><h2>Graph after a pass</h2>
<p>pass <select id="graph-pass"></select> search <input id="node-search" placeholder="node name">
<label id="collapse-label"><input type="checkbox" id="collapse"> one box per block</label> <span class="note">wheel: zoom, drag: pan</span></p>
<div class="graph-box" id="graph-view"></div></section>
<section id="diff-section"><h2>What a pass changed</h2>
<p>pass <select id="diff-pass"></select> <span id="diff-summary"></span>
<span class="legend"><span style="background:#ffd6d6">removed</span><span style="background:#d8f5d8">added</span><span style="background:#fff1c7">changed</span></span></p>
<div class="panes"><div><b>before</b><div class="graph-box" id="diff-before"></div></div><div><b>after</b><div class="graph-box" id="diff-after"></div></div></div></section>
<section id="profile-section"><h2>Per-kernel profile</h2>
<p class="note">Click a kernel to see it among the fused kernels (the graph after the schedule row).</p>
<p id="profile-total"></p>
<table id="profile"></table></section>
<script type="application/json" id="kiln-data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_page(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(render(data), encoding="utf-8")
    return path
