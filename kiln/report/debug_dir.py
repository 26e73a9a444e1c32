"""The debug directory: the IR after every stage as numbered files (`003_fold_batch_norm.txt`,
`013_tvm_FuseTIR.py`), with the report as text, JSON and a drift table, in one folder."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.report.records import Report


class DebugDir:
    """Numbered IR dumps (`003_fold_batch_norm.txt`) and the report, in one folder."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            # dumps of an earlier compile into the same folder would read as this one's
            for stale in self.path.glob("[0-9][0-9][0-9]_*"):
                stale.unlink()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def dump(self, index: int, name: str, text: str, suffix: str = ".txt") -> None:
        if self.path is not None:
            safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
            (self.path / f"{index:03d}_{safe}{suffix}").write_text(text)

    def write_report(self, report: Report) -> None:
        if self.path is not None:
            (self.path / "report.txt").write_text(report.table() + "\n")
            (self.path / "report.json").write_text(json.dumps(report.to_json(), indent=1, default=str))
            drift = ["index\tpass\tstage\tmax_abs\tmax_rel\tcosine"]
            drift += [
                f"{r.index}\t{r.name}\t{r.stage}\t{r.drift.max_abs:.3e}\t{r.drift.max_rel:.3e}\t{r.drift.cosine:.8f}"
                for r in report.rows if r.drift is not None
            ]
            (self.path / "drift.tsv").write_text("\n".join(drift) + "\n")
