"""The one pass loop. Kiln's graph passes, the backend's import, TVM's Relax passes, scheduling
and code generation all run through `run_steps`, so what a user sees of one step (a report row,
its time, the drift of the outputs, the IR dumped after it, progress) is what they see of every
step, and a new kind of observation is one Instrument, added once.

The shape is TVM's `tvm.ir.instrument.PassInstrument`: an instrument's `run_before_pass` runs
before a step, its `run_after_pass` after it. Instruments nest: befores run in list order, afters
in reverse, so the innermost instrument (Timing, last in the list) times the step alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from kiln.errors import InternalError, KilnError, PassError
from kiln.report.records import PassRecord, Report


@dataclass(frozen=True)
class StepOutcome:
    """What a step made: the new IR (the same object where it changed nothing) and its record's
    lines (`changes` rewrites, a `note`, a line per layer it changed)."""

    ir: Any
    changes: int | None = None
    note: str = ""
    layers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One named step of the loop: `run` takes the IR (a Kiln Graph, a TVM IRModule) and returns
    a StepOutcome. `stage` says whose step it is ("kiln" for graph passes, else the backend's name);
    `preserves_values` is a graph pass's promise that its outputs stay (kiln/passes/registry.py)."""

    name: str
    stage: str
    run: Callable[[Any], StepOutcome]
    preserves_values: bool = False


class Instrument:
    """Sees every step of the loop; both methods do nothing unless a subclass says otherwise."""

    def run_before_pass(self, step: Step, ir: Any) -> None:
        """Called before `step` runs on `ir`."""

    def run_after_pass(self, step: Step, before: Any, after: Any, record: PassRecord) -> None:
        """Called after `step` turned `before` into `after`; `record` is its report row, filled in
        by the instruments before it is added to the report."""


Failure = Callable[[Step, Any, Exception], Exception]


def pass_failure(step: Step, ir: Any, error: Exception) -> Exception:
    """A graph pass that raised, as the KilnError a user reads: a PassError naming it (a KilnError
    that already names it passes through). A backend's step raises its own errors (TVM's write a
    reproducer); anything else escaping it is an InternalError naming the step."""
    if step.stage != "kiln":
        return error if isinstance(error, KilnError) else InternalError(
            f"{step.stage} step '{step.name}' failed: {type(error).__name__}: {error} "
            "(Kiln did not expect this: please report it with this message)")
    if isinstance(error, KilnError):
        if isinstance(error, PassError) and f"'{step.name}'" not in str(error):
            return PassError(f"pass '{step.name}': {error}")
        return error
    return PassError(f"pass '{step.name}' failed: {type(error).__name__}: {error}")


def run_steps(ir: Any, steps: Sequence[Step], report: Report, instruments: Sequence[Instrument] = (),
              failure: Failure = pass_failure) -> Any:
    """Each step in turn on the IR the one before it made, a report row each; the IR at the end.
    A step that raises becomes `failure(step, ir, error)` (a PassError naming it; TVM's steps
    write a reproducer, kiln/backends/tvm/reproducer.py)."""
    for step in steps:
        for instrument in instruments:
            instrument.run_before_pass(step, ir)
        try:
            outcome = step.run(ir)
        except Exception as error:
            raised = failure(step, ir, error)
            if raised is error:
                raise
            raise raised from error
        record = PassRecord(report.next_index(), step.name, step.stage, 0.0, outcome.changes, note=outcome.note,
                            layers=dict(outcome.layers))
        for instrument in reversed(instruments):
            instrument.run_after_pass(step, ir, outcome.ir, record)
        report.add(record)
        ir = outcome.ir
    return ir
