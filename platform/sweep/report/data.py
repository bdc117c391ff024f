"""What a report or leaderboard reads from a sweep folder, and the Optuna study rebuilt from it.

Everything comes from the sweep's tables through :func:`~lesionsweep.sweep.results.read_table`
(``trials.parquet``, ``epochs.parquet``) and its ``sweep.yaml`` (objective metric(s) and modes,
the search spaces). The Optuna study used for the plots is built **in memory** from those tables
(:func:`build_study`): one :class:`optuna.trial.FrozenTrial` per trial, with the distributions of
the sweep's search spaces (or, for a parameter no space declares, inferred from its column), the
final objective value(s), and the per-epoch objective as intermediate values. So the report works
on every sweep folder, whatever searcher ran it and whether or not a journal file exists.

Status mapping: ``completed`` → COMPLETE; ``pruned`` and ``stopped`` (cut short by the time
budget) → PRUNED; ``failed`` → FAIL; ``pending``/``running`` → RUNNING.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from ...errors import ConfigError
from ...ranking import is_better
from ..export import SPEC_FILE
from ..results import EPOCHS_FILE, TRIALS_FILE, read_table
from ..spaces import Choice, Const, FloatRange, IntRange
from ..spec import spec_from_dict
from ..storage import SweepLocation

__all__ = ["SweepData", "load_sweep", "build_study", "objective_value", "run_folder", "best_so_far"]

_STATE = {
    "completed": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "stopped": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
    "pending": optuna.trial.TrialState.RUNNING,
    "running": optuna.trial.TrialState.RUNNING,
}


@dataclass
class SweepData:
    """A sweep's tables as plain rows plus its objective.

    Attributes:
        location: the sweep folder.
        name: the sweep name.
        metrics, modes: the objective metric(s) (``val/...``) and ``max``/``min`` per metric.
        trials: ``trials.parquet`` rows (dicts keyed by column name), in trial-id order.
        epochs: ``epochs.parquet`` rows (``trial_id``, ``epoch``, every metric).
        spec: the raw ``sweep.yaml`` mapping.
        distributions: parameter key → Optuna distribution (from the search spaces).
    """

    location: SweepLocation
    name: str
    metrics: list[str]
    modes: list[str]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    spec: Mapping[str, Any]
    distributions: dict[str, optuna.distributions.BaseDistribution] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]

    @property
    def params(self) -> list[str]:
        """Parameter keys present in the trials table (without the ``param.`` prefix)."""
        keys = {k[6:] for r in self.trials for k in r if k.startswith("param.")}
        return sorted(keys)

    def epochs_of(self, trial_id: str) -> list[dict[str, Any]]:
        return sorted(
            (e for e in self.epochs if e["trial_id"] == trial_id), key=lambda e: e["epoch"]
        )


def _optuna_dist(dist: Any) -> optuna.distributions.BaseDistribution | None:
    if isinstance(dist, FloatRange):
        return optuna.distributions.FloatDistribution(
            dist.low, dist.high, log=dist.log, step=dist.step
        )
    if isinstance(dist, IntRange):
        return optuna.distributions.IntDistribution(
            dist.low, dist.high, log=dist.log, step=dist.step
        )
    if isinstance(dist, Choice):
        return optuna.distributions.CategoricalDistribution(list(dist.values))
    if isinstance(dist, Const):
        return None  # a fixed value carries no information for the plots
    return None


def _space_distributions(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Parameter key → Optuna distribution over all spaces of the spec (first space wins)."""
    try:
        spec = spec_from_dict(dict(raw), source=source)
    except ConfigError:
        return {}  # an old or hand-edited spec: fall back to the columns
    out: dict[str, Any] = {}
    for space in spec.spaces.spaces:
        for p in space.params:
            if p.key in out or p.key in spec.spaces.pins:
                continue
            d = _optuna_dist(p.dist)
            if d is not None:
                out[p.key] = d
    return out


def load_sweep(sweep: str | Path) -> SweepData:
    """Read a sweep folder's spec and tables.

    Raises:
        ConfigError: not a sweep folder (no ``sweep.yaml`` / ``trials.parquet``), or no
            objective recorded.
    """
    loc = SweepLocation.parse(sweep)
    if not loc.exists(SPEC_FILE):
        raise ConfigError(f"{loc.join(SPEC_FILE)}: not found (is {loc.root} a sweep folder?)")
    raw = yaml.safe_load(loc.read_bytes(SPEC_FILE).decode()) or {}
    obj = raw.get("objective") or {}
    metrics, modes = list(obj.get("metrics") or []), list(obj.get("modes") or [])
    if not metrics or len(metrics) != len(modes):
        raise ConfigError(f"{loc.join(SPEC_FILE)}: objective.metrics/modes missing or unequal")
    trials = sorted(read_table(loc, TRIALS_FILE).to_pylist(), key=lambda r: r["trial_id"])
    try:  # through read_table only: it also reads tables kept as fragments
        epochs = read_table(loc, EPOCHS_FILE).to_pylist()
    except ConfigError:
        epochs = []  # no epoch reported yet
    spec_raw = dict(raw)
    spec_raw["storage"], spec_raw["name"] = loc.storage, loc.name
    return SweepData(
        location=loc,
        name=loc.name,
        metrics=metrics,
        modes=modes,
        trials=trials,
        epochs=epochs,
        spec=raw,
        distributions=_space_distributions(spec_raw, loc.join(SPEC_FILE)),
    )


def objective_value(row: Mapping[str, Any], metric: str, by: str = "final") -> float | None:
    """``<by>.<metric>`` of a trials row as a finite float, else None."""
    v = row.get(f"{by}.{metric}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def run_folder(data: SweepData, row: Mapping[str, Any]) -> Path | None:
    """A trial's run folder: its recorded ``run_dir``, else ``<sweep>/runs/<trial_id>`` (a sweep
    folder that was moved); None when neither exists or the sweep is not local."""
    local = data.location.local_path
    cands: list[Path] = []
    if row.get("run_dir"):
        recorded = Path(str(row["run_dir"]))  # relative to the sweep root (schema 2)
        if not recorded.is_absolute():
            recorded = local / recorded if local is not None else recorded
        if recorded.is_absolute():
            cands.append(recorded)
    if local is not None:
        cands.append(local / "runs" / str(row["trial_id"]))
    for c in cands:
        if c.is_dir():
            return c
    return None


def _infer_dist(values: Sequence[Any]) -> optuna.distributions.BaseDistribution | None:
    vals = [v for v in values if v is not None]
    if len({repr(v) for v in vals}) < 2:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        lo, hi = min(vals), max(vals)
        if all(isinstance(v, int) for v in vals):
            return optuna.distributions.IntDistribution(int(lo), int(hi))
        return optuna.distributions.FloatDistribution(float(lo), float(hi))
    return optuna.distributions.CategoricalDistribution(sorted({v for v in vals}, key=repr))


def build_study(data: SweepData) -> optuna.Study:
    """An in-memory Optuna study with one frozen trial per row of ``trials.parquet``.

    Distributions come from the search spaces (:attr:`SweepData.distributions`), else from the
    parameter's column; a value outside its distribution (a pinned key) drops that parameter for
    that trial. Intermediate values are the per-epoch first objective metric.
    """
    dists = dict(data.distributions)
    for key in data.params:
        if key not in dists:
            d = _infer_dist([r.get(f"param.{key}") for r in data.trials])
            if d is not None:
                dists[key] = d
    directions = [
        optuna.study.StudyDirection.MAXIMIZE if m == "max" else optuna.study.StudyDirection.MINIMIZE
        for m in data.modes
    ]
    storage = optuna.storages.InMemoryStorage()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line per report
    try:
        storage.create_new_study(directions, study_name=data.name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    study = optuna.load_study(study_name=data.name, storage=storage)
    by_trial: dict[str, dict[int, float]] = {}
    for e in data.epochs:
        v = e.get(data.metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            by_trial.setdefault(e["trial_id"], {})[int(e["epoch"])] = float(v)
    frozen = []
    for row in data.trials:
        state = _STATE.get(row["status"], optuna.trial.TrialState.FAIL)
        values = [objective_value(row, m) for m in data.metrics]
        if state == optuna.trial.TrialState.COMPLETE and any(v is None for v in values):
            state = optuna.trial.TrialState.FAIL  # completed without a finite objective
        params: dict[str, Any] = {}
        pdists: dict[str, Any] = {}
        for key, d in dists.items():
            v = row.get(f"param.{key}")
            if v is None:
                continue
            try:
                d.to_internal_repr(v)
            except (ValueError, TypeError):
                continue
            if isinstance(d, optuna.distributions.CategoricalDistribution) and v not in d.choices:
                continue
            numeric = (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)
            if isinstance(d, numeric) and not d.low <= v <= d.high:
                continue
            params[key], pdists[key] = v, d
        frozen.append(
            optuna.trial.create_trial(
                state=state,
                values=[float(v) for v in values if v is not None]
                if state == optuna.trial.TrialState.COMPLETE
                else None,
                params=params,
                distributions=pdists,
                intermediate_values=by_trial.get(row["trial_id"], {}),
                user_attrs={
                    "trial_id": row["trial_id"],
                    "method": row["method"],
                    "status": row["status"],
                },
            )
        )
    study.add_trials(frozen)
    return study


def best_so_far(data: SweepData) -> tuple[list[int], list[float]]:
    """The search-efficiency curve: ``(epochs spent, best final objective so far)``.

    Epochs of every trial (pruned and failed ones included) are counted in the order they were
    reported; the curve steps when a *completed* trial reports its last epoch, to that trial's
    final value of the first objective metric if it beats the best so far. Returns one point per
    step (empty before the first completed trial).
    """
    final = {
        r["trial_id"]: (int(r.get("epochs_run") or 0), objective_value(r, data.metric))
        for r in data.trials
        if r["status"] == "completed"
    }
    rows = sorted(
        data.epochs, key=lambda e: (str(e.get("reported_at") or ""), e["trial_id"], e["epoch"])
    )
    xs: list[int] = []
    ys: list[float] = []
    best: float | None = None
    for spent, e in enumerate(rows, start=1):
        end = final.get(e["trial_id"])
        if end is None or end[1] is None or int(e["epoch"]) != end[0]:
            continue
        v = end[1]
        if is_better(v, best, data.mode):
            best = v
            xs.append(spent)
            ys.append(v)
    return xs, ys
