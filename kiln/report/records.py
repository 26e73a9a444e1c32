"""The compile report's records: a row per stage of the compilation (Kiln's passes, TVM's, code
generation, the cache, the board) with its time, statistics and the drift of the outputs from
the eager model. The pass manager writes Kiln's rows; the backends add theirs to the same
`Report`, so a user reads the whole compilation in one table (`kiln/report/debug_dir.py` keeps
the IR dumps beside it, `kiln/report/page.py` draws it)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from kiln.ir.stats import GraphStats, format_bytes, format_flops


@dataclass(frozen=True)
class Drift:
    """How far outputs moved from the eager model: max |a−b|, that relative to max |b|, cosine."""

    max_abs: float
    max_rel: float
    cosine: float

    @classmethod
    def between(cls, outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> "Drift":
        flat = lambda tensors: torch.cat([torch.as_tensor(t).detach().reshape(-1).double().cpu() for t in tensors] or
                                         [torch.zeros(0, dtype=torch.float64)])
        got, want = flat(outputs), flat(reference)
        if got.shape != want.shape:
            return cls(math.inf, math.inf, -1.0)
        # equal values (the same infinity included) and NaN against NaN are no drift; the scale
        # and the cosine are the finite values'
        same = (got == want) | (got.isnan() & want.isnan())
        differing = (got - want)[~same].abs()
        max_abs = (differing.max().item() if not differing.isnan().any() else math.nan) if differing.numel() else 0.0
        finite = want.isfinite() & got.isfinite()
        scale = want[want.isfinite()].abs().max().item() if want.isfinite().any() else 0.0
        a, b = got[finite], want[finite]
        norms = a.norm() * b.norm()
        cosine = (a @ b / norms).item() if norms > 0 else float(torch.equal(a, b))
        return cls(max_abs, max_abs / scale if scale else max_abs, cosine)

    def exceeds(self, tolerance: float) -> bool:
        """True when the drift relative to the output's scale is over `tolerance` (or not finite)."""
        return not (self.max_rel <= tolerance)


@dataclass
class PassRecord:
    index: int
    name: str
    stage: str  # "kiln" for graph passes, "tvm" for backend passes and code generation
    seconds: float
    changes: int | None = None
    stats: GraphStats | None = None
    drift: Drift | None = None
    note: str = ""
    layers: dict[str, str] = field(default_factory=dict)  # per-layer lines of compression passes


@dataclass
class Report:
    rows: list[PassRecord] = field(default_factory=list)

    def add(self, record: PassRecord) -> PassRecord:
        self.rows.append(record)
        return record

    def next_index(self) -> int:
        return len(self.rows)

    def first_drift_over(self, tolerance: float) -> PassRecord | None:
        """The first pass after which outputs drift more than `tolerance` from eager."""
        return next((r for r in self.rows if r.drift is not None and r.drift.exceeds(tolerance)), None)

    def html(self, path: str | Path, tolerance: float = 1e-4, profile: Any = None, title: str = "Kiln report") -> Path:
        """This report as one self-contained page (kiln/report/): the pass table and the drift plot,
        with `profile` (`cm.profile()`) its per-kernel table. The graphs after each pass are a
        debug directory's: compile with `debug_dir=`, whose report.html has them all."""
        from kiln.report import page_data  # the package's page, beside these records
        from kiln.report.page import write_page

        return write_page(Path(path), page_data(self, title, tolerance, profile=profile.to_json() if profile is not None else None))

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def table(self) -> str:
        header = ("#", "pass", "stage", "time", "changes", "nodes", "params", "weights", "FLOPs", "max|Δ|", "cosine", "note")
        lines = [header]
        for r in self.rows:
            s, d = r.stats, r.drift
            lines.append((
                f"{r.index:03d}", r.name, r.stage, f"{r.seconds * 1000:.1f} ms",
                "" if r.changes is None else str(r.changes),
                str(s.nodes) if s else "", f"{s.params:,}" if s else "", format_bytes(s.param_bytes) if s else "",
                format_flops(s.flops) if s else "",
                f"{d.max_abs:.2e}" if d else "", f"{d.cosine:.6f}" if d else "", r.note,
            ))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        text.append(f"total {self.total_seconds:.2f} s")
        for r in self.rows:
            if r.layers:
                text.append(f"\n{r.name}, per layer:")
                text += [f"  {layer}: {what}" for layer, what in r.layers.items()]
        return "\n".join(text)

    def to_json(self) -> list[dict]:
        rows = []
        for r in self.rows:
            row = asdict(r)
            row["stats"] = None if r.stats is None else {
                "nodes": r.stats.nodes, "params": r.stats.params, "param_bytes": r.stats.param_bytes,
                "flops": r.stats.flops, "ops": dict(r.stats.ops),
            }
            rows.append(row)
        return rows

    @classmethod
    def from_json(cls, rows: list[dict]) -> "Report":
        records = []
        for row in rows:
            stats = row.pop("stats")
            drift = row.pop("drift")
            records.append(PassRecord(
                **row,
                stats=None if stats is None else GraphStats(Counter(stats["ops"]), stats["params"], stats["param_bytes"], stats["flops"]),
                drift=None if drift is None else Drift(**drift),
            ))
        return cls(records)

    def __str__(self) -> str:
        return self.table()
