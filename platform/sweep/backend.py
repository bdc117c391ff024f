"""The Ray Tune + Optuna (+ Ray Train) backend: the ONLY module importing ``ray.tune``,
``ray.train`` and ``optuna`` (a test greps for it). Ray's API has moved several times; each move
is a change to this one file.

How a sweep runs
----------------
* Ray: started in-process (``address="local"``, dashboard off, token authentication left as
  Ray sets it) unless ``--address`` / ``RAY_ADDRESS`` names an existing cluster.
* Searcher: Ray's ``OptunaSearch`` with a define-by-run function compiled from the spaces
  (:class:`~lesionsweep.sweep.spaces.SpaceSet`) and the spec's Optuna sampler. Subclassed as
  :class:`SweepSearcher` so that (a) intermediate values are reported at our ``epoch`` (not Tune's
  ``training_iteration``, which restarts after a resume) and (b) trials stopped by ASHA reach
  Optuna as ``PRUNED`` (Ray 2.60 tells them ``COMPLETE`` with a partial-training score).
* Early stopping: :class:`PersistentASHA`, Ray's ASHA with ``time_attr="epoch"`` that writes its
  rung records and the set of pruned trials to ``<sweep>/asha_state.json`` after every decision
  and reloads them after ``Tuner.restore`` (Ray does not checkpoint scheduler state). A trial
  pruned before an interruption stays pruned after the resume.
* Trials: a Tune *function* trainable. One worker: :func:`run_training` runs right in the trial
  process (``tune.with_resources``; no Ray Train start-up). Several workers: the trial process
  drives a Ray Train V2 ``TorchTrainer`` (gloo on CPU, nccl on GPU; the trainer does DDP) whose
  rank-0 metrics reach Tune through ``TuneReportCallback``.
* Each trial writes to ``<sweep>/runs/<trial_id>/`` (checkpoints every epoch, ``metrics.jsonl``,
  TensorBoard scalars and overlays). On a resume an unfinished trial restarts with the same id
  and ``run_training(resume=True)`` continues after its last checkpoint. With an object-store
  sweep (``s3://``...) the run folder is the trial's local folder; checkpoints are reported to
  Tune (uploaded) and restored from there, and the folder is synced as trial artifacts.
* Results: :class:`ResultsCallback` (a Tune callback in the driver) keeps ``trials.parquet`` and
  ``epochs.parquet`` current and writes each trial's HParams session. At start and end it
  reconciles with the trials' own ``metrics.jsonl`` (local / shared storage), so a driver killed
  between a report and a table write loses no row, and keyed rows never duplicate.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from ..config import config_from_dict
from ..errors import ConfigError, TrainingError
from ._ray.session import init_ray, shutdown_ray  # noqa: F401 (commands call backend.shutdown_ray)
from .hparams import write_session_end, write_session_start
from .results import EpochRecord, ResultsStore, TrialRecord, finite_metrics
from .spaces import SpaceSet
from .spec import SweepSpec, build_trial_config
from .storage import SweepLocation
from .summary import ProgressPrinter

__all__ = [
    "SPACE_KEY",
    "PARAMS_KEY",
    "build_sampler",
    "DefineByRun",
    "SweepSearcher",
    "PersistentASHA",
    "ResultsCallback",
    "init_ray",
    "run_tune",
    "pruned_trials",
    "optuna_study",
    "ASHA_STATE_FILE",
]

log = logging.getLogger("lesionsweep.sweep")

#: keys of the trial config (the flat params live under PARAMS_KEY)
SPACE_KEY = "_space"
PARAMS_KEY = "_params"
ASHA_STATE_FILE = "asha_state.json"
RUNS_DIR = "runs"
TRAIN_RUNS_DIR = "train_runs"

#: trial ids stopped early by ASHA, per sweep folder (driver process only)
_PRUNED: dict[str, set[str]] = {}
#: runtime switches of the driver (not pickled into tuner.pkl)
_RUNTIME: dict[str, Any] = {"progress": True}
#: the Optuna study of each sweep folder's searcher (driver process only; tests, inspection)
_STUDIES: dict[str, optuna.Study] = {}
#: the live results callback of each sweep folder (driver process only)
_CALLBACKS: dict[str, ResultsCallback] = {}


def optuna_study(root: str) -> optuna.Study | None:
    """The Optuna study of the sweep at ``root`` run in this process (None if none ran)."""
    return _STUDIES.get(root)


def pruned_trials(root: str) -> set[str]:
    """Trial ids ASHA stopped early in the sweep at ``root`` (this driver process)."""
    return _PRUNED.setdefault(root, set())


# =============================================================================================
# Optuna: samplers and the define-by-run function
# =============================================================================================

_SAMPLERS: dict[str, str] = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "nsga2": "NSGAIISampler",
    "qmc": "QMCSampler",
}


def build_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The spec's Optuna sampler, seeded with the spec's seed.

    TPE on a conditional space (``when`` or several spaces) of a single-objective sweep gets
    ``multivariate=True, group=True`` unless the spec says otherwise, so that it models the
    parameters that co-occur together.

    Raises:
        ConfigError: an option the sampler does not take, or a missing optional dependency.
    """
    name = spec.searcher.name
    cls = getattr(optuna.samplers, _SAMPLERS[name])
    opts: dict[str, Any] = dict(spec.searcher.options)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{spec.source}: searcher cmaes needs the `cmaes` package (pip install cmaes)"
            ) from None
    if name == "grid":
        opts["search_space"] = spec.spaces.grid()
    conditional = len(spec.spaces.spaces) > 1 or any(
        p.when for s in spec.spaces.spaces for p in s.params
    )
    if name == "tpe" and conditional and not spec.objective.multi:
        opts.setdefault("multivariate", True)
        opts.setdefault("group", True)
    params = inspect.signature(cls).parameters
    bad = sorted(k for k in opts if k not in params)
    if bad:
        allowed = sorted(k for k in params if k not in ("seed", "search_space"))
        raise ConfigError(
            f"{spec.source}: searcher.{bad[0]}: not an option of optuna's {cls.__name__}; "
            f"allowed: {', '.join(allowed)}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(seed=spec.seed, **opts)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{spec.source}: searcher {name}: {e}") from None


class DefineByRun:
    """The Optuna define-by-run function: draws ``(space, params)`` for one trial.

    Returns ``{SPACE_KEY: name, PARAMS_KEY: {key: value}}``; Ray merges it with the raw Optuna
    parameters into the trial config.
    """

    def __init__(self, spaces: SpaceSet) -> None:
        self.spaces = spaces

    def __call__(self, trial: Any) -> dict[str, Any]:
        name, params = self.spaces.sample(trial, number=trial.number)
        return {SPACE_KEY: name, PARAMS_KEY: params}


class SweepSearcher(OptunaSearch):
    """``OptunaSearch`` that tells Optuna the truth about early-stopped trials.

    * Intermediate values are reported at step ``result["epoch"]``.
    * A trial that :class:`PersistentASHA` stopped (listed in :func:`pruned_trials`) is told
      ``TrialState.PRUNED``, after its last value is reported as an intermediate value; Optuna's
      samplers then treat it as an incomplete trial instead of a complete one with a
      partial-training score.

    Args:
        root: the sweep folder (the key of the pruned-trial ledger).
        **kwargs: passed to ``OptunaSearch``.
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._root_at_creation = root

    @property
    def _root(self) -> str:
        """The sweep folder (the running sweep's, if it was moved since this was pickled)."""
        return _RUNTIME.get("root") or self._root_at_creation

    def suggest(self, trial_id: str) -> dict | None:
        if self._ot_study is not None:
            _STUDIES[self._root] = self._ot_study
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        value = result.get(self.metric)
        if ot_trial is None or value is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a re-reported step after a resume is ignored
            try:
                ot_trial.report(float(value), step)
            except (ValueError, TypeError, NotImplementedError):
                pass

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        pruned = pruned_trials(self._root)
        if (
            not error
            and trial_id in pruned
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
        ):
            if result:
                self.on_trial_result(trial_id, result)
            assert self._ot_study is not None
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            except Exception as e:  # noqa: BLE001 - Optuna refuses e.g. a finished trial
                log.warning("could not tell Optuna trial %s PRUNED: %s", trial_id, e)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def study(self) -> optuna.Study | None:
        """The underlying Optuna study (in memory, saved with the searcher state)."""
        return self._ot_study


# =============================================================================================
# ASHA with persisted rungs
# =============================================================================================


class PersistentASHA(AsyncHyperBandScheduler):
    """ASHA on our ``epoch`` metric whose rungs survive ``Tuner.restore``.

    After every decision the rung records (milestone → {trial id: score}) and the pruned trial
    ids are written to ``<sweep>/asha_state.json``; the first hook call after a restore reads
    them back (rungs whose milestones differ, i.e. a changed ASHA setup, are not reloaded). A
    trial is *pruned* when ASHA stops it before its own last epoch (``epochs_total``, reported
    by the trial). Trials reaching their last epoch finish normally (``stop_last_trials=False``).
    A pruned trial that is resumed (the driver died before Tune recorded the stop) is stopped
    again at its first result.
    """

    def __init__(
        self,
        root: str,
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
        self._root_at_creation = root
        self._loaded = False

    @property
    def _root(self) -> str:
        """The sweep folder (the running sweep's, if it was moved since this was pickled)."""
        return _RUNTIME.get("root") or self._root_at_creation

    def _signature(self) -> dict[str, Any]:
        return {"metric": self._metric, "mode": self._mode, "max_t": self._max_t}

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        loc = SweepLocation(self._root)
        if not loc.exists(ASHA_STATE_FILE):
            return
        try:
            state = json.loads(loc.read_bytes(ASHA_STATE_FILE))
        except (ValueError, OSError) as e:
            log.warning("ignoring unreadable %s: %s", loc.join(ASHA_STATE_FILE), e)
            return
        pruned_trials(self._root).update(state.get("pruned", []))
        if state.get("signature") != self._signature():
            return
        self._num_stopped = int(state.get("num_stopped", 0))
        for bracket, saved in zip(self._brackets, state.get("brackets", []), strict=False):
            for (milestone, recorded), (m2, rec2) in zip(bracket._rungs, saved, strict=False):
                if float(milestone) == float(m2):
                    recorded.update({k: float(v) for k, v in rec2.items()})

    def _save(self) -> None:
        state = {
            "version": 1,
            "signature": self._signature(),
            "num_stopped": self._num_stopped,
            "pruned": sorted(pruned_trials(self._root)),
            "brackets": [
                [[float(m), {k: float(v) for k, v in rec.items()}] for m, rec in b._rungs]
                for b in self._brackets
            ],
        }
        SweepLocation(self._root).write_bytes(ASHA_STATE_FILE, json.dumps(state).encode())

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._ensure_loaded()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._ensure_loaded()
        pruned = pruned_trials(self._root)
        if trial.trial_id in pruned:
            return TrialScheduler.STOP
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get("epoch")
        total = result.get("epochs_total", self._max_t)
        if decision == TrialScheduler.STOP and epoch is not None and epoch < total:
            pruned.add(trial.trial_id)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._ensure_loaded()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._trial_info.pop(trial.trial_id, None)


# =============================================================================================
# The trial
# =============================================================================================


def _run_dir(root: str, trial_id: str) -> str:
    return SweepLocation(root).join(RUNS_DIR, trial_id)


class _MetricMissing(ConfigError):
    """An objective / early-stopping metric the trainer does not report (aborts the sweep)."""


def _check_metrics(needed: Sequence[str], metrics: Mapping[str, Any]) -> None:
    missing = [m for m in needed if m not in metrics]
    if missing:
        raise _MetricMissing(
            f"objective/early-stopping metric(s) {missing} are not reported by the trainer; "
            f"reported: {', '.join(sorted(k for k in metrics if k.startswith('val/')))} ..."
        )


def _report_dict(metrics: Mapping[str, Any], epoch: int, epochs_total: int) -> dict[str, Any]:
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    out["epoch"] = int(epoch)
    out["epochs_total"] = int(epochs_total)
    return out


class _TuneReporter:
    """The trainer's reporter inside a single-worker trial: ``tune.report`` every epoch."""

    def __init__(self, needed: Sequence[str], epochs_total: int, upload: bool) -> None:
        self.needed = list(needed)
        self.epochs_total = epochs_total
        self.upload = upload
        self.checked = False

    def __call__(self, rep: Any) -> None:
        if not self.checked:
            _check_metrics(self.needed, rep.metrics)
            self.checked = True
        ckpt = None
        if self.upload and rep.checkpoint_dir is not None:
            ckpt = tune.Checkpoint.from_directory(str(rep.checkpoint_dir))
        tune.report(_report_dict(rep.metrics, rep.epoch, self.epochs_total), checkpoint=ckpt)


def _train_worker(config: dict) -> None:
    """Ray Train worker loop of a multi-worker trial (torch.distributed is initialised)."""
    import ray.train
    from lesionsweep.training import run_training

    cfg = config_from_dict(config["cfg"], source=f"trial {config['trial_id']}")
    needed, total = config["needed"], int(config["epochs_total"])
    checked = [False]

    def reporter(rep: Any) -> None:
        if not checked[0]:
            _check_metrics(needed, rep.metrics)
            checked[0] = True
        ray.train.report(_report_dict(rep.metrics, rep.epoch, total))

    run_training(cfg, Path(config["out_dir"]), reporter=reporter, resume=True)


def _root_cause(e: BaseException) -> str:
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^([\w.]+\.)?\w*(Error|Exception)\b.*:", ln):
            return ln[:500]
    return (lines[-1] if lines else type(e).__name__)[:500]


def trial_fn(config: dict, sweep: dict | None = None) -> None:
    """The Tune function trainable: one trial = one :func:`run_training` call.

    Args:
        config: the trial config (``SPACE_KEY``, ``PARAMS_KEY`` and Optuna's raw names).
        sweep: ``{"spec": SweepSpec, "root": sweep folder}`` (via ``tune.with_parameters``).
    """
    assert sweep is not None
    spec: SweepSpec = sweep["spec"]
    root: str = sweep["root"]
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    cfg = build_trial_config(spec, config[SPACE_KEY], config[PARAMS_KEY])
    loc = SweepLocation(root)
    needed = list(spec.objective.metrics)
    es_metric = spec.early_stopping.metric
    if spec.early_stopping.enabled and es_metric is not None and es_metric not in needed:
        needed.append(es_metric)
    total = cfg.train.epochs
    if loc.is_local:
        out_dir = Path(_run_dir(root, trial_id))
    else:
        out_dir = Path(ctx.get_trial_dir()) / "run"
        ckpt = tune.get_checkpoint()
        if ckpt is not None and not (out_dir / "checkpoints" / "last.pt").is_file():
            ckpt.to_directory(str(out_dir / "checkpoints"))

    if spec.resources.workers == 1:
        from lesionsweep.training import run_training

        run_training(
            cfg, out_dir, reporter=_TuneReporter(needed, total, not loc.is_local), resume=True
        )
        return

    from ray.train import FailureConfig as TrainFailureConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "out_dir": str(out_dir),
            "needed": needed,
            "epochs_total": total,
            "trial_id": trial_id,
        },
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=TrainRunConfig(
            name=f"train-{trial_id}",
            storage_path=loc.join(TRAIN_RUNS_DIR),
            failure_config=TrainFailureConfig(max_failures=0),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
    )
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - re-raised with the worker's root cause first
        raise TrainingError(f"Ray Train run failed: {_root_cause(e)}") from e


# =============================================================================================
# Results callback
# =============================================================================================


def _trainer_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's metrics in a Tune result (``group/name`` keys and ``lr``)."""
    return finite_metrics({k: v for k, v in result.items() if "/" in k or k == "lr"})


def _headline(metrics: Mapping[str, float], keep: Sequence[str]) -> dict[str, float]:
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
    path = trial.pickled_error_file  # written locally by Trial.handle_error just before
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
        return _root_cause(err)
    text = None
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    if text:
        return _root_cause(Exception(text))
    return "trial failed (no error recorded)"


class ResultsCallback(tune.Callback):
    """Keeps the Parquet tables, HParams sessions and progress lines current (driver side).

    Args:
        spec: the sweep spec.
        root: the sweep folder.
    """

    def __init__(self, spec: SweepSpec, root: str) -> None:
        self.spec = spec
        self._root_at_creation = root
        self._store: ResultsStore | None = None
        self._printer: ProgressPrinter | None = None
        self._reconciled = False
        self.abort_reason: str | None = None

    @property
    def root(self) -> str:
        """The sweep folder (the running sweep's, if it was moved since this was pickled)."""
        return _RUNTIME.get("root") or self._root_at_creation

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_store"] = None
        d["_printer"] = None
        d["_reconciled"] = False
        return d

    # --------------------------------------------------------------------------- helpers
    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(
                SweepLocation(self.root), self.spec.name, self.spec.spaces.column_types()
            ).load()
        return self._store

    def _counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.store.trials.values():
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def _record(self, trial: Trial) -> TrialRecord:
        rec = self.store.trials.get(trial.trial_id)
        if rec is not None:
            return rec
        space = str(trial.config.get(SPACE_KEY, ""))
        params = dict(trial.config.get(PARAMS_KEY, {}))
        try:
            cfg = build_trial_config(self.spec, space, params)
            method, config_json = cfg.method.name, json.dumps(cfg.to_dict())
        except ConfigError:
            method, config_json = str(params.get("method.name", "?")), "{}"
        res = self.spec.resources
        run_dir = _run_dir(self.root, trial.trial_id) if SweepLocation(self.root).is_local else ""
        rec = TrialRecord(
            trial_id=trial.trial_id,
            status="pending",
            space=space,
            method=method,
            workers=res.workers,
            cpus_per_worker=res.cpus_per_worker,
            gpus_per_worker=res.gpus_per_worker,
            run_dir=run_dir,
            config_json=config_json,
            params=params,
        )
        self.store.upsert_trial(rec)
        return rec

    def _epochs_total(self, rec: TrialRecord) -> int | None:
        try:
            return int(json.loads(rec.config_json)["train"]["epochs"])
        except (KeyError, ValueError, TypeError):
            return None

    def _refresh(self, rec: TrialRecord) -> None:
        """Recompute final/best/epochs of a trial from its epoch rows."""
        rows = self.store.epochs_of(rec.trial_id)
        if not rows:
            return
        keep = list(self.spec.objective.metrics)
        last = rows[-1]
        rec.epochs_run = last.epoch
        rec.final = _headline(last.metrics, keep)
        rec.objective = rec.final.get(keep[0])
        m, mode = keep[0], self.spec.objective.modes[0]
        best = None
        for r in rows:
            v = r.metrics.get(m)
            if v is None or not math.isfinite(v):
                continue
            if best is None or (v > best.metrics[m] if mode == "max" else v < best.metrics[m]):
                best = r
        if best is not None:
            rec.best_epoch = best.epoch
            rec.best = _headline(best.metrics, keep)
        rec.wall_time_s = max(rec.wall_time_s, last.elapsed_s)
        rec.updated_at = last.reported_at

    def _add_epoch(
        self, rec: TrialRecord, epoch: int, metrics: dict[str, float], elapsed: float
    ) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        self.store.add_epoch(
            EpochRecord(
                trial_id=rec.trial_id,
                space=rec.space,
                method=rec.method,
                epoch=epoch,
                elapsed_s=elapsed,
                metrics=metrics,
            )
        )

    def _reconcile_from_run_dir(self, rec: TrialRecord) -> None:
        """Fill epoch rows from the trial's own ``metrics.jsonl`` (local/shared storage)."""
        if not rec.run_dir:
            return
        if not Path(rec.run_dir).is_dir():  # the sweep folder was moved since
            rec.run_dir = _run_dir(self.root, rec.trial_id)
        path = Path(rec.run_dir) / "metrics.jsonl"
        if not path.is_file():
            return
        elapsed = 0.0
        known = {e.epoch: e for e in self.store.epochs_of(rec.trial_id)}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            epoch = int(row.get("epoch", 0))
            if epoch < 1:
                continue
            elapsed += float(row.get("time/epoch_s") or 0.0)
            if epoch in known:
                continue
            metrics = {
                k: (float("nan") if v is None else float(v))
                for k, v in row.items()
                if ("/" in k or k == "lr") and (v is None or isinstance(v, (int, float)))
            }
            self._add_epoch(rec, epoch, metrics, elapsed)
        self._refresh(rec)

    def _final_status(self, rec: TrialRecord) -> str:
        if rec.trial_id in pruned_trials(self.root):
            return "pruned"
        total = self._epochs_total(rec)
        if total is not None and rec.epochs_run < total:
            return "stopped"
        return "completed"

    def _hparams_dir(self, rec: TrialRecord) -> Path | None:
        return Path(rec.run_dir) / "tensorboard" if rec.run_dir else None

    def _drop_lost(self, trials: Sequence[Trial]) -> None:
        """Forget rows of trials the restored Tune state does not know.

        Tune saves its experiment state every ``TUNE_GLOBAL_CHECKPOINT_S`` seconds; a trial
        started after the last save and before the driver died is unknown after a restore (the
        searcher, saved at the same time, draws its configuration again under a new trial id).
        Its rows are removed so the tables hold each trial once, and its run folder is moved to
        ``lost_runs/``.
        """
        known = {t.trial_id for t in trials}
        lost = [tid for tid in self.store.trials if tid not in known]
        for tid in lost:
            rec = self.store.trials.pop(tid)
            for key in [k for k in self.store.epochs if k[0] == tid]:
                del self.store.epochs[key]
            self.store._dirty = True
            if rec.run_dir and Path(rec.run_dir).is_dir():
                dest = Path(self.root) / "lost_runs" / tid
                dest.parent.mkdir(parents=True, exist_ok=True)
                Path(rec.run_dir).rename(dest)
            log.warning(
                "trial %s started after Tune's last state save and was lost with the driver; "
                "its rows were removed (run folder moved to lost_runs/)",
                tid,
            )

    def _reconcile(self, trials: Sequence[Trial], at_end: bool) -> None:
        if not at_end:
            self._drop_lost(trials)
        for t in trials:
            if t.status == Trial.PENDING and t.trial_id not in self.store.trials:
                continue
            rec = self._record(t)
            self._reconcile_from_run_dir(rec)
            if t.status == Trial.TERMINATED and rec.status in ("pending", "running"):
                status = self._final_status(rec)
                if status == "stopped" and at_end and not self._time_budget_spent():
                    # stopped by Ctrl-C, not by the budget: Tune saved it as RUNNING and
                    # `lesionsweep resume` continues it
                    rec.status = "running"
                else:
                    rec.status = status
                    self._end_session(rec)
            elif t.status == Trial.ERROR and rec.status != "failed":
                rec.status = "failed"
                rec.error = rec.error or _error_reason(t)
                self._end_session(rec)
            elif at_end and t.status == Trial.RUNNING:
                rec.status = "running"
            self.store.upsert_trial(rec)
        self.store.flush(force=True)

    def _time_budget_spent(self) -> bool:
        budget = self.spec.budget.time_s
        return budget is not None and time.monotonic() - self._t_start >= budget - 1.0

    def _end_session(self, rec: TrialRecord) -> None:
        d = self._hparams_dir(rec)
        if d is not None:
            try:
                write_session_end(d, rec.status)
            except OSError as e:
                log.warning("could not write the HParams session end of %s: %s", rec.trial_id, e)

    # --------------------------------------------------------------------------- Tune hooks
    def setup(
        self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any
    ) -> None:
        self._store = None
        self._reconciled = False
        self._t_start = time.monotonic()
        if _RUNTIME.get("progress"):
            self._printer = ProgressPrinter(
                self.spec.budget.trials, self.spec.objective.metric, self.spec.objective.mode
            )
        _ = self.store  # load existing tables (resume)
        _CALLBACKS[self.root] = self

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
            from datetime import datetime, timezone

            rec.started_at = datetime.now(timezone.utc)
        self.store.upsert_trial(rec)
        d = self._hparams_dir(rec)
        if d is not None:
            hp = {"trial_id": rec.trial_id, "space": rec.space, "method": rec.method, **rec.params}
            try:
                write_session_start(d, hp, group_name=rec.trial_id)
            except OSError as e:
                log.warning("could not write the HParams session of %s: %s", rec.trial_id, e)
        self.store.flush(force=True)
        if self._printer:
            self._printer.started(rec, self._counts())

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        if "epoch" not in result:
            return
        rec = self._record(trial)
        rec.status = "running"
        self._add_epoch(
            rec,
            int(result["epoch"]),
            _trainer_metrics(result),
            float(result.get("time_total_s", 0.0)),
        )
        self._refresh(rec)
        self.store.upsert_trial(rec)
        self.store.flush()
        if self._printer:
            self._printer.epoch(rec, self._epochs_total(rec), self._counts())

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        rec = self._record(trial)
        self._reconcile_from_run_dir(rec)
        rec.status = self._final_status(rec)
        self.store.upsert_trial(rec)
        self._end_session(rec)
        self.store.flush(force=True)
        if self._printer:
            self._printer.finished(rec, self._counts())

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        rec = self._record(trial)
        self._reconcile_from_run_dir(rec)
        rec.status = "failed"
        rec.error = _error_reason(trial)
        if "_MetricMissing" in rec.error or "are not reported by the trainer" in rec.error:
            self.abort_reason = rec.error
        self.store.upsert_trial(rec)
        self._end_session(rec)
        self.store.flush(force=True)
        if self._printer:
            self._printer.finished(rec, self._counts())

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._reconcile(trials, at_end=True)


class _AbortStopper(tune.Stopper):
    """Stops the whole sweep when the results callback found a sweep-level error."""

    def __init__(self, callback: ResultsCallback) -> None:
        self.callback = callback

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.callback.abort_reason is not None


# =============================================================================================
# Ray and the Tuner
# =============================================================================================


def _trainable(spec: SweepSpec, root: str) -> Any:
    res = spec.resources
    if res.workers == 1:
        resources: dict[str, float] = {"CPU": res.cpus_per_worker}
        if res.gpus_per_worker > 0:
            resources["GPU"] = res.gpus_per_worker
    else:  # the trial only drives the Train run: its workers hold the resources
        resources = {"CPU": 0.01}
    fn = tune.with_parameters(trial_fn, sweep={"spec": spec, "root": root})
    return tune.with_resources(fn, resources)


def _effective_concurrency(spec: SweepSpec) -> int:
    """Concurrency capped by what the cluster can hold at once (warns when capped)."""
    res = spec.resources
    total = ray.cluster_resources()
    caps = [spec.concurrency]
    need_cpu = res.workers * res.cpus_per_worker + (0.01 if res.workers > 1 else 0.0)
    caps.append(max(1, int(total.get("CPU", 0) // need_cpu)) if need_cpu else spec.concurrency)
    if res.gpus_per_worker > 0:
        have = total.get("GPU", 0)
        if have < res.gpus_per_worker * res.workers:
            raise ConfigError(
                f"{spec.source}: resources ask for {res.workers} x {res.gpus_per_worker} GPU per "
                f"trial but the cluster has {have} GPU(s)"
            )
        caps.append(max(1, int(round(have / (res.gpus_per_worker * res.workers), 6))))
    if total.get("CPU", 0) < need_cpu:
        raise ConfigError(
            f"{spec.source}: resources ask for {need_cpu:g} CPU(s) per trial but the cluster has "
            f"{total.get('CPU', 0):g}"
        )
    c = min(caps)
    if c < spec.concurrency:
        log.warning(
            "concurrency %d lowered to %d: the cluster (%s) cannot hold more trials at once",
            spec.concurrency,
            c,
            {k: v for k, v in total.items() if k in ("CPU", "GPU")},
        )
    return c


def _tuner(spec: SweepSpec, root: str, callback: ResultsCallback) -> tune.Tuner:
    loc = SweepLocation(root)
    single = not spec.objective.multi
    searcher = SweepSearcher(
        root,
        space=DefineByRun(spec.spaces),
        metric=spec.objective.metric if single else list(spec.objective.metrics),
        mode=spec.objective.mode if single else list(spec.objective.modes),
        sampler=build_sampler(spec),
    )
    es = spec.early_stopping
    scheduler: TrialScheduler
    if es.enabled:
        scheduler = PersistentASHA(
            root,
            metric=str(es.metric),
            mode=str(es.mode),
            max_t=es.max_t or spec.max_epochs(),
            grace_period=es.grace_period,
            reduction_factor=es.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        _trainable(spec, root),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.budget.trials,
            max_concurrent_trials=_effective_concurrency(spec),
            time_budget_s=spec.budget.time_s,
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=loc.name,
            storage_path=loc.storage,
            callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],
            stop=_AbortStopper(callback),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            sync_config=tune.SyncConfig(sync_artifacts=not loc.is_local),
            verbose=0,
        ),
    )


def _quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # we add JSON + CSV ourselves
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0: no Tune tables, our lines only
    # a failing trial is one line in our progress output and its reason in trials.parquet; the
    # traceback stays in the Tune trial folder (error.txt)
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    # save Tune's experiment state (trials + searcher) at most every 2 s instead of >= 10 s,
    # so a killed driver loses at most the trials started in the last 2 s (see _drop_lost)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


def run_tune(
    spec: SweepSpec,
    root: str,
    restore: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
) -> tuple[list[TrialRecord], bool, str | None]:
    """Run (or resume) the sweep's Tune experiment; Ray must be initialised.

    Returns:
        ``(trial records, interrupted, abort reason)``: interrupted is True when trials were
        left unfinished (Ctrl-C); the abort reason is set when the sweep stopped itself (e.g. an
        objective metric the trainer does not report).
    """
    _quiet_libraries()
    _RUNTIME["progress"] = progress
    _RUNTIME["root"] = root
    try:
        return _run_tune(spec, root, restore, retry_failed)
    finally:
        _RUNTIME["root"] = None


def _run_tune(
    spec: SweepSpec, root: str, restore: bool, retry_failed: bool
) -> tuple[list[TrialRecord], bool, str | None]:
    loc = SweepLocation(root)
    if restore:
        if not tune.Tuner.can_restore(loc.root):
            raise ConfigError(f"{loc.root}: no Ray Tune experiment state to resume from")
        tuner = tune.Tuner.restore(
            loc.root,
            trainable=_trainable(spec, root),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=retry_failed,
        )
    else:
        tuner = _tuner(spec, root, ResultsCallback(spec, root))
    _CALLBACKS.pop(root, None)
    tuner.fit()
    callback = _CALLBACKS.pop(root, None)
    records: list[TrialRecord] = []
    abort = None
    if callback is not None:
        records = sorted(callback.store.trials.values(), key=lambda r: r.trial_id)
        abort = callback.abort_reason
    interrupted = abort is None and (
        any(r.status in ("pending", "running") for r in records)
        or (spec.budget.time_s is None and len(records) < spec.budget.trials)
    )
    return records, interrupted, abort
