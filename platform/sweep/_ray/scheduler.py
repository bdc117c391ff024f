"""ASHA on our ``epoch`` metric whose rungs survive a resume (Ray does not checkpoint schedulers).

Every rung record (milestone, trial id, score) and every pruned trial id is appended as one
JSON line to ``<sweep>/asha_state.jsonl`` when ASHA makes it: O(1) per decision, whatever the
sweep's size. The first hook call of a run reads the file back (rung records only when the
header's ASHA setup matches; pruned ids always).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from .context import ASHA_STATE_FILE, SweepContext

__all__ = ["PersistentASHA"]

log = logging.getLogger("lesionsweep.sweep")


class PersistentASHA(AsyncHyperBandScheduler):
    """ASHA with ``time_attr="epoch"``, one bracket and persisted rungs.

    A trial is *pruned* when ASHA stops it before its own last epoch (``epochs_total``, reported
    by the trial); trials reaching their last epoch finish normally (``stop_last_trials=False``).
    A pruned trial that is resumed (the driver died before Tune recorded the stop) is stopped
    again at its first result.

    Args:
        ctx: the driver run's context (its ``pruned`` set is shared with the searcher).
        metric, mode, max_t, grace_period, reduction_factor: ASHA's settings.
    """

    def __init__(
        self,
        ctx: SweepContext,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 2.0,
    ) -> None:
        super().__init__(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
            stop_last_trials=False,
        )
        self.ctx = ctx
        self._loaded = False
        self._logged: set[tuple[float, str]] = set()

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ctx"] = None  # bound again by the driver of each run
        return d

    @property
    def _path(self) -> Path | None:
        loc = self.ctx.location
        return Path(loc.join(ASHA_STATE_FILE)) if loc.is_local else None

    def _signature(self) -> dict[str, Any]:
        return {"metric": self._metric, "mode": self._mode, "max_t": self._max_t}

    def _append(self, rows: list[dict[str, Any]]) -> None:
        path = self._path
        if path is None or not rows:
            return
        with open(path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self._path
        if path is None:
            return
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append([{"signature": self._signature()}])
            return
        same = False
        rungs = {float(m): rec for m, rec in self._brackets[0]._rungs}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a killed driver
            if "signature" in row:
                same = row["signature"] == self._signature()
            elif "pruned" in row:
                self.ctx.pruned.add(str(row["pruned"]))
            elif "rung" in row and same:
                m, tid, score = row["rung"]
                if float(m) in rungs:
                    rungs[float(m)][str(tid)] = float(score)
                    self._logged.add((float(m), str(tid)))
        if not same:
            self._append([{"signature": self._signature()}])

    def _log_new_rungs(self, trial_id: str, pruned: bool) -> None:
        rows: list[dict[str, Any]] = []
        for m, rec in self._brackets[0]._rungs:
            key = (float(m), trial_id)
            if trial_id in rec and key not in self._logged:
                self._logged.add(key)
                rows.append({"rung": [float(m), trial_id, float(rec[trial_id])]})
        if pruned:
            rows.append({"pruned": trial_id})
        self._append(rows)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._ensure_loaded()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._ensure_loaded()
        if trial.trial_id in self.ctx.pruned:
            return TrialScheduler.STOP
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get("epoch")
        total = result.get("epochs_total", self._max_t)
        pruned = decision == TrialScheduler.STOP and epoch is not None and epoch < total
        if pruned:
            self.ctx.pruned.add(trial.trial_id)
        self._log_new_rungs(trial.trial_id, pruned)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._ensure_loaded()
        if trial.trial_id in self._trial_info:
            if self._metric in (result or {}) and self._time_attr in (result or {}):
                super().on_trial_complete(tune_controller, trial, result)
                self._log_new_rungs(trial.trial_id, False)
            self._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
