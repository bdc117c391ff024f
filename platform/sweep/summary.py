"""Progress lines while a sweep runs, and the short summary when it ends (plain Python)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..ranking import is_better
from .results import EPOCHS_FILE, TRIALS_FILE, TrialRecord

__all__ = ["ProgressPrinter", "BestTrial", "SweepSummary", "summarize"]


def _fmt(v: float | None) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.4f}"


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )


class ProgressPrinter:
    """One line per trial event: elapsed time, counts, ETA; plus a compact running-trials view.

    The ETA is the time per finished trial in this run times the trials left (``-`` before the
    first one finishes). Every ``view_every_s`` seconds (at an epoch event) one more line lists
    the running trials as ``<trial id> e<epoch>/<epochs> <metric>``.

    Args:
        total: the trial budget.
        metric: the metric shown (the first objective metric).
        mode: ``max`` or ``min`` (for the running best).
        stream: where to print (default stderr); ``None`` prints nothing.
        done_before: trials already finished when this run started (a resume).
        view_every_s: seconds between two running-trials views.
    """

    def __init__(
        self,
        total: int,
        metric: str,
        mode: str,
        stream: TextIO | None = sys.stderr,
        done_before: int = 0,
        view_every_s: float = 30.0,
    ) -> None:
        self.total = total
        self.metric = metric
        self.mode = mode
        self.stream = stream
        self.t0 = time.monotonic()
        self.best: tuple[float, str] | None = None
        self.done_before = done_before
        self.view_every_s = view_every_s
        self._last_view = self.t0
        self.running: dict[str, tuple[int, int | None, float | None]] = {}

    def eta_s(self, done: int) -> float | None:
        """Seconds left at this run's pace (None before a trial of this run finished)."""
        finished_here = done - self.done_before
        if finished_here <= 0 or done >= self.total:
            return None if done < self.total else 0.0
        return (time.monotonic() - self.t0) / finished_here * (self.total - done)

    def _emit(self, text: str, counts: Mapping[str, int]) -> None:
        if self.stream is None:
            return
        done = sum(counts.get(s, 0) for s in ("completed", "pruned", "stopped", "failed"))
        el = time.monotonic() - self.t0
        eta = self.eta_s(done)
        best = f"best {self.metric} {_fmt(self.best[0])} ({self.best[1]})" if self.best else ""
        print(
            f"[{_clock(el)} eta {_clock(eta) if eta is not None else '-'}] {done}/{self.total} "
            f"done, {counts.get('running', 0)} running | {text}" + (f" | {best}" if best else ""),
            file=self.stream,
            flush=True,
        )

    def view(self) -> str:
        """The running trials, compactly: ``id e<epoch>/<total> <metric>`` each."""
        parts = [
            f"{tid} e{ep}/{tot if tot else '?'} {_fmt(v)}"
            for tid, (ep, tot, v) in sorted(self.running.items())
        ]
        return "running: " + (" | ".join(parts) if parts else "none")

    def _maybe_view(self) -> None:
        now = time.monotonic()
        if self.stream is not None and now - self._last_view >= self.view_every_s:
            self._last_view = now
            print(self.view(), file=self.stream, flush=True)

    def _update_best(self, rec: TrialRecord) -> None:
        v = rec.final.get(self.metric)
        if v is None or not math.isfinite(v) or rec.status != "completed":
            return
        if is_better(v, None if self.best is None else self.best[0], self.mode):
            self.best = (v, rec.trial_id)

    def started(self, rec: TrialRecord, counts: Mapping[str, int]) -> None:
        self.running[rec.trial_id] = (rec.epochs_run, None, None)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in rec.params.items())
        self._emit(f"{rec.trial_id} started [{rec.space}/{rec.method}] {shown}", counts)

    def epoch(self, rec: TrialRecord, total_epochs: int | None, counts: Mapping[str, int]) -> None:
        self.running[rec.trial_id] = (rec.epochs_run, total_epochs, rec.final.get(self.metric))
        of = f"/{total_epochs}" if total_epochs else ""
        self._emit(
            f"{rec.trial_id} epoch {rec.epochs_run}{of} {self.metric} "
            f"{_fmt(rec.final.get(self.metric))}",
            counts,
        )
        self._maybe_view()

    def finished(self, rec: TrialRecord, counts: Mapping[str, int]) -> None:
        self.running.pop(rec.trial_id, None)
        self._update_best(rec)
        extra = f": {rec.error}" if rec.error else ""
        self._emit(
            f"{rec.trial_id} {rec.status} after {rec.epochs_run} epoch(s), "
            f"{self.metric} {_fmt(rec.final.get(self.metric))}{extra}",
            counts,
        )

    def message(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


@dataclass(frozen=True)
class BestTrial:
    """The best completed trial of one method."""

    method: str
    trial_id: str
    values: Mapping[str, float]
    run_dir: str
    params: Mapping[str, Any]
    status: str = "completed"
    epochs_run: int = 0


@dataclass
class SweepSummary:
    """What a finished (or interrupted) sweep produced.

    Attributes:
        name, folder: the sweep and its folder (path or URI).
        counts: trials by status.
        best_per_method: best completed trial of each method on the first objective metric.
        metrics, modes: the objective.
        exported: exported config files (best overall and per method, or the Pareto front).
        wall_time_s: wall time of this run of the driver.
        interrupted: the driver stopped before the budget was used (Ctrl-C); resume it.
        failures: distinct failure reasons → number of failed trials with that reason.
    """

    name: str
    folder: str
    counts: dict[str, int]
    best_per_method: list[BestTrial]
    metrics: Sequence[str]
    modes: Sequence[str]
    exported: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    interrupted: bool = False
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def none_completed(self) -> bool:
        """No trial completed (the CLI exits non-zero)."""
        return not self.counts.get("completed") and not self.interrupted

    @property
    def trials_path(self) -> str:
        return f"{self.folder.rstrip('/')}/{TRIALS_FILE}"

    @property
    def epochs_path(self) -> str:
        return f"{self.folder.rstrip('/')}/{EPOCHS_FILE}"

    def format(self) -> str:
        """A short human-readable summary."""
        n = sum(self.counts.values())
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()) if v)
        lines = [
            f"sweep {self.name!r}: {n} trial(s) ({counts or 'none'}) in {self.wall_time_s:.0f} s"
            + (" - INTERRUPTED, continue with `lesionsweep resume`" if self.interrupted else ""),
        ]
        if self.best_per_method:
            obj = ", ".join(f"{m} ({d})" for m, d in zip(self.metrics, self.modes, strict=True))
            lines.append(f"best trial per method on the final epoch's {obj}:")
            for b in self.best_per_method:
                vals = " ".join(f"{m}={_fmt(b.values.get(m))}" for m in self.metrics)
                note = (
                    ""
                    if b.status == "completed"
                    else f"  ({b.status} after {b.epochs_run} epoch(s): no completed trial)"
                )
                lines.append(f"  {b.method:<16} {b.trial_id:<14} {vals}{note}")
        else:
            lines.append("no completed trial yet")
        if self.failures:
            lines.append(f"failed trials by reason ({len(self.failures)} distinct):")
            for reason, n in sorted(self.failures.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {n:>4} x {reason}")
        lines.append(f"results:     {self.trials_path} (one row per trial)")
        lines.append(f"             {self.epochs_path} (one row per trial and epoch)")
        lines.append(f"logs:        tensorboard --logdir {self.folder}")
        for p in self.exported:
            lines.append(f"exported:    {p}  (run it with `lesionsweep train {p}`)")
        return "\n".join(lines)


def summarize(
    name: str,
    folder: str,
    records: Sequence[TrialRecord],
    metrics: Sequence[str],
    modes: Sequence[str],
    wall_time_s: float = 0.0,
    exported: Sequence[str] = (),
    interrupted: bool = False,
) -> SweepSummary:
    """Build the summary from the trial records."""
    counts: dict[str, int] = {}
    failures: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status == "failed":
            reason = (r.error or "unknown").splitlines()[0][:300]
            failures[reason] = failures.get(reason, 0) + 1
    best: dict[str, TrialRecord] = {}
    m0, mode0 = metrics[0], modes[0]

    def better(r: TrialRecord, cur: TrialRecord | None) -> bool:
        if cur is None:
            return True
        rank = {"completed": 0, "stopped": 1, "pruned": 1}
        if rank[r.status] != rank[cur.status]:  # a completed trial beats a partial one
            return rank[r.status] < rank[cur.status]
        if r.epochs_run != cur.epochs_run and r.status != "completed":
            return r.epochs_run > cur.epochs_run  # partial trials: the one trained longest
        return is_better(r.final[m0], cur.final[m0], mode0)

    for r in sorted(records, key=lambda r: r.trial_id):
        v = r.final.get(m0)
        if r.status not in ("completed", "stopped", "pruned") or v is None or not math.isfinite(v):
            continue
        if better(r, best.get(r.method)):
            best[r.method] = r
    return SweepSummary(
        name=name,
        folder=folder,
        counts=counts,
        best_per_method=[
            BestTrial(
                method=m,
                trial_id=r.trial_id,
                values={k: r.final.get(k, float("nan")) for k in metrics},
                run_dir=f"{folder.rstrip('/')}/{r.run_dir}" if r.run_dir else "",
                params=dict(r.params),
                status=r.status,
                epochs_run=r.epochs_run,
            )
            for m, r in sorted(best.items())
        ],
        metrics=list(metrics),
        modes=list(modes),
        exported=list(exported),
        wall_time_s=wall_time_s,
        interrupted=interrupted,
        failures=failures,
    )
