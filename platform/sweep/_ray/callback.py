"""The results callback (driver side): trial rows, HParams sessions, progress, reconciliation.

Per trial event it rewrites only that trial's one-row fragment (start, end, and at most every
``write_every_s`` while it runs), so its cost does not grow with the sweep. At a trial's end it
reads the trial's own epoch fragment (written by the trial) for the final/best metrics. At the
first step of a run it reconciles with what Tune restored (trials Tune lost with a killed driver
are recorded if they had finished and re-drawn if not, Optuna trials left RUNNING are settled);
at the end it compacts the fragments.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from ...errors import ConfigError, LesionSweepError
from ...ranking import is_better
from ...training import finalize_checkpoints
from ..hparams import write_session_end, write_session_start
from ..results import EpochRecord, TrialRecord
from ..spec import build_trial_config
from ..store import ResultsStore
from ..summary import ProgressPrinter
from .context import SweepContext
from .searcher import PARAMS_KEY, SPACE_KEY, Outcome
from .trial import METRIC_MISSING, root_cause

__all__ = ["ResultsCallback", "AbortStopper", "headline"]

log = logging.getLogger("lesionsweep.sweep")

#: a trial row's statuses once it has ended
_FINAL = ("completed", "pruned", "stopped", "failed")


def headline(metrics: Mapping[str, float], keep: Sequence[str]) -> dict[str, float]:
    """Metrics for the trials table: every ``<split or stage>/<name>`` metric without a
    per-class breakdown (``val/``, ``val-loc/``, a pipeline's ``stage2/``...), ``train/loss``
    and the objective metrics; not timings or other ``train/`` figures."""
    return {
        k: v
        for k, v in metrics.items()
        if k in keep
        or k == "train/loss"
        or (k.count("/") == 1 and not k.startswith(("train/", "time/")))
    }


def _error_reason(trial: Trial) -> str:
    """``ExceptionType: message`` of a failed trial's root cause (from Tune's error files)."""
    import ray.cloudpickle as cloudpickle

    err: Any = None
    path = trial.pickled_error_file
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as f:
                err = cloudpickle.load(f)
        except Exception:  # noqa: BLE001 - unreadable pickle: fall back to the text file
            err = None
    if err is not None:
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            return f"{type(cause).__name__}: {cause}"[:500]
        return root_cause(err)
    if trial.error_file and Path(trial.error_file).is_file():
        return root_cause(Path(trial.error_file).read_text())
    return "trial failed (no error recorded)"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


class ResultsCallback(tune.Callback):
    """Keeps the trial rows, HParams sessions and progress lines current.

    Args:
        ctx: the driver run's context (not pickled).
        write_every_s: least seconds between two fragment writes of a running trial.
    """

    def __init__(self, ctx: SweepContext, write_every_s: float = 5.0) -> None:
        self.ctx = ctx
        self.write_every_s = write_every_s
        self.store = ResultsStore(ctx.location, ctx.spec.name, ctx.spec.spaces.column_types())
        self.printer: ProgressPrinter | None = None
        self.abort_reason: str | None = None
        self._reconciled = False
        self._last_write: dict[str, float] = {}
        self._totals: dict[str, int | None] = {}
        self._t_start = time.monotonic()
        ctx.callback = self

    def __getstate__(self) -> dict[str, Any]:
        return {"write_every_s": self.write_every_s}  # rebuilt by the driver of each run

    # --------------------------------------------------------------------------- helpers
    def _counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.store.trials.values():
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def _abs_run_dir(self, rec: TrialRecord) -> Path | None:
        loc = self.ctx.location
        return Path(loc.join(rec.run_dir)) if rec.run_dir and loc.is_local else None

    def _record(self, trial: Trial) -> TrialRecord:
        rec = self.store.trials.get(trial.trial_id)
        if rec is not None:
            return rec
        spec = self.ctx.spec
        space = str(trial.config.get(SPACE_KEY, ""))
        params = dict(trial.config.get(PARAMS_KEY, {}))
        try:
            cfg = build_trial_config(spec, space, params)
            method, config_json = cfg.method.name, json.dumps(cfg.to_dict())
        except ConfigError:
            method, config_json = str(params.get("method.name", "?")), "{}"
        res = spec.resources
        rec = TrialRecord(
            trial_id=trial.trial_id,
            status="pending",
            space=space,
            method=method,
            workers=res.workers,
            cpus_per_worker=res.cpus_per_worker,
            gpus_per_worker=res.gpus_per_worker,
            run_dir=self.ctx.run_dir(trial.trial_id) if self.ctx.location.is_local else "",
            config_json=config_json,
            params=params,
        )
        self.store.upsert_trial(rec, write=False)
        return rec

    def _epochs_total(self, rec: TrialRecord) -> int | None:
        if rec.trial_id not in self._totals:
            try:
                self._totals[rec.trial_id] = int(json.loads(rec.config_json)["train"]["epochs"])
            except (KeyError, ValueError, TypeError):
                self._totals[rec.trial_id] = None
        return self._totals[rec.trial_id]

    def _refresh(self, rec: TrialRecord) -> None:
        """Final/best/epochs of a trial from its epoch rows (its fragment)."""
        rows: list[EpochRecord] = self.store.epochs_of(rec.trial_id, headline_only=True)
        if not rows:
            return
        keep = list(self.ctx.spec.objective.metrics)
        last = rows[-1]
        rec.epochs_run = last.epoch
        rec.final = headline(last.metrics, keep)
        rec.objective = rec.final.get(keep[0])
        m, mode = keep[0], self.ctx.spec.objective.modes[0]
        best = None
        for r in rows:
            v = r.metrics.get(m)
            if is_better(v, None if best is None else best.metrics[m], mode):
                best = r
        if best is not None:
            rec.best_epoch = best.epoch
            rec.best = headline(best.metrics, keep)
        rec.wall_time_s = max(rec.wall_time_s, last.elapsed_s)

    def _final_status(self, rec: TrialRecord) -> str:
        if rec.error:
            return "failed"
        if rec.trial_id in self.ctx.pruned:
            return "pruned"
        total = self._epochs_total(rec)
        if total is not None and rec.epochs_run < total:
            return "stopped"
        return "completed"

    def _finish(self, rec: TrialRecord, status: str | None = None) -> None:
        self._refresh(rec)
        rec.status = status or self._final_status(rec)
        rec.updated_at = datetime.now(timezone.utc)
        d = self._abs_run_dir(rec)
        if d is not None:
            if rec.status in ("pruned", "stopped"):
                self._apply_checkpoint_policy(rec, d / "checkpoints")
            rec.checkpoint_bytes = _dir_bytes(d / "checkpoints")
            try:
                write_session_end(d / "tensorboard", rec.status, step=rec.epochs_run)
            except OSError as e:
                log.warning("could not write the HParams session end of %s: %s", rec.trial_id, e)
        self.store.upsert_trial(rec)
        self._last_write.pop(rec.trial_id, None)
        self._totals.pop(rec.trial_id, None)
        # the row is on disk; the copy kept for counts and the summary drops its biggest field
        rec.config_json = ""
        if self.printer:
            self.printer.finished(rec, self._counts())

    def _apply_checkpoint_policy(self, rec: TrialRecord, ckpt_dir: Path) -> None:
        """A trial stopped early never reached the trainer's end: apply its checkpoint policy
        (``train.keep_checkpoint`` / ``train.keep_resumable``) here."""
        try:
            train = json.loads(rec.config_json)["train"]
            finalize_checkpoints(
                ckpt_dir, train.get("keep_checkpoint", "best"), train.get("keep_resumable", False)
            )
        except (KeyError, ValueError, TypeError, OSError, LesionSweepError) as e:
            log.warning("checkpoint policy not applied to %s: %s", rec.trial_id, e)

    def _settle_lost(self, trials: Sequence[Trial]) -> dict[str, Outcome]:
        """Settle the trials the restored Tune state does not know.

        Tune saves its experiment state every few seconds (Ray's automatic period); a trial
        started after the last save and before the driver died is unknown after a restore.
        One that had finished (a final status in its row, or every epoch in its own epoch
        fragment, which the trial writes itself) is recorded as it ended and keeps its run
        folder; it takes a place of the budget (:meth:`SweepSearcher.limit_new`). One that had
        not is re-drawn by Tune: its rows and fragments are removed so every trial is in the
        tables once, and its run folder is moved to ``lost_runs/``.

        Returns:
            The recorded ones: ``{trial id: (status, objective values, epochs run)}``.
        """
        known = {t.trial_id for t in trials}
        kept: dict[str, Outcome] = {}
        for tid in [t for t in self.store.trials if t not in known]:
            rec = self.store.trials[tid]
            if rec.status not in _FINAL:
                self._refresh(rec)
                total = self._epochs_total(rec)
                if total is not None and rec.epochs_run >= total and not rec.error:
                    self._finish(rec, "completed")
            if rec.status in _FINAL:
                values = [rec.final.get(m) for m in self.ctx.spec.objective.metrics]
                kept[tid] = (rec.status, values, rec.epochs_run)
                log.warning("trial %s finished after Tune's last save: recorded", tid)
                continue
            self.store.drop_trial(tid)
            d = self._abs_run_dir(rec)
            if d is not None and d.is_dir():
                dest = Path(self.ctx.location.join("lost_runs", tid))
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(d), str(dest))
            log.warning("trial %s was lost with a killed driver (Tune re-draws it)", tid)
        return kept

    def _reconcile(self, trials: Sequence[Trial], at_end: bool) -> None:
        if not at_end:
            kept = self._settle_lost(trials)
            searcher = self.ctx.searcher
            if searcher is not None:
                n = searcher.settle({t.trial_id for t in trials}, kept)
                if n:
                    log.warning("%d Optuna trial(s) left RUNNING by a killed driver settled", n)
                if kept:  # Tune still counts their places: it would draw that many too many
                    searcher.limit_new(self.ctx.spec.budget.trials - len(trials) - len(kept))
        for t in trials:
            if t.status == Trial.PENDING and t.trial_id not in self.store.trials:
                continue
            rec = self._record(t)
            if t.status == Trial.TERMINATED and rec.status in ("pending", "running"):
                status = self._final_status_after(rec, t)
                if status == "stopped" and at_end and not self._time_budget_spent():
                    rec.status = "running"  # Ctrl-C: `lesionsweep resume` continues it
                    self._refresh(rec)
                    self.store.upsert_trial(rec)
                else:
                    self._finish(rec, status)
            elif t.status == Trial.ERROR and rec.status != "failed":
                rec.error = rec.error or _error_reason(t)
                self._finish(rec, "failed")
            elif t.status in (Trial.RUNNING, Trial.PAUSED) or (
                at_end and t.status == Trial.PENDING
            ):
                self._refresh(rec)
                rec.status = "running" if rec.status == "pending" and at_end else rec.status
                self.store.upsert_trial(rec)

    def _final_status_after(self, rec: TrialRecord, t: Trial) -> str:
        err = (t.last_result or {}).get("trial_error")
        if err:
            rec.error = str(err)
        self._refresh(rec)
        return self._final_status(rec)

    def _time_budget_spent(self) -> bool:
        budget = self.ctx.spec.budget.time_s
        return budget is not None and time.monotonic() - self._t_start >= budget - 1.0

    # --------------------------------------------------------------------------- Tune hooks
    def setup(
        self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any
    ) -> None:
        self._t_start = time.monotonic()
        self.store.load()  # O(trials): the trials table only
        if self.ctx.progress:
            spec = self.ctx.spec
            live = ("pending", "running")
            done = sum(1 for r in self.store.trials.values() if r.status not in live)
            self.printer = ProgressPrinter(
                spec.budget.trials, spec.objective.metric, spec.objective.mode, done_before=done
            )

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials, at_end=False)

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        rec = self._record(trial)
        rec.status = "running"
        if rec.started_at is None:
            rec.started_at = datetime.now(timezone.utc)
        rec.updated_at = datetime.now(timezone.utc)
        self.store.upsert_trial(rec)
        self._last_write[rec.trial_id] = time.monotonic()
        d = self._abs_run_dir(rec)
        if d is not None:
            hp = {"trial_id": rec.trial_id, "space": rec.space, "method": rec.method, **rec.params}
            try:
                write_session_start(d / "tensorboard", hp, group_name=rec.trial_id)
            except OSError as e:
                log.warning("could not write the HParams session of %s: %s", rec.trial_id, e)
        if self.printer:
            self.printer.started(rec, self._counts())

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        rec = self._record(trial)
        if result.get("trial_error"):
            rec.error = str(result["trial_error"])
            if METRIC_MISSING in rec.error:
                self.abort_reason = rec.error
            return
        if "epoch" not in result:
            return
        rec.status = "running"
        rec.epochs_run = int(result["epoch"])
        for m in self.ctx.spec.objective.metrics:
            if m in result:
                rec.final[m] = float(result[m])
        rec.objective = rec.final.get(self.ctx.spec.objective.metrics[0])
        rec.wall_time_s = float(result.get("time_total_s", rec.wall_time_s))
        rec.updated_at = datetime.now(timezone.utc)
        now = time.monotonic()
        if now - self._last_write.get(rec.trial_id, 0.0) >= self.write_every_s:
            self.store.upsert_trial(rec)
            self._last_write[rec.trial_id] = now
        if self.printer:
            self.printer.epoch(rec, self._epochs_total(rec), self._counts())

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        rec = self._record(trial)
        err = (trial.last_result or {}).get("trial_error")
        if err:
            rec.error = str(err)
        self._finish(rec)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        rec = self._record(trial)
        rec.error = _error_reason(trial)
        self._finish(rec, "failed")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._reconcile(trials, at_end=True)
        self.store.compact(only_terminal=True)


class AbortStopper(tune.Stopper):
    """Stops the whole sweep when the results callback found a sweep-level error."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        cb = getattr(self, "ctx", None) and self.ctx.callback
        return cb is not None and cb.abort_reason is not None
