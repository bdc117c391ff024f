"""The sweep driver: builds the Tuner (fresh or restored) around one :class:`SweepContext`.

* Fresh and resumed runs both build NEW searcher/scheduler/callback objects bound to this run's
  context and sweep folder. On a resume they replace the ones pickled in ``tuner.pkl`` (Tune
  then restores the searcher's small state into the new searcher), so a copied sweep folder
  resumes in itself and no path from a pickle is ever used.
* Tune's strict metric check is off: a trial that reports only ``trial_error`` (a deterministic
  failure) or that was restored after it had finished must never abort the whole sweep. The
  trial checks the objective metric itself (a missing one stops the sweep with a clear message).
* Fault tolerance: ``tune.FailureConfig(max_failures=spec.max_failures)`` (default 2) retries a
  trial whose worker or node died; the trial continues from its run folder's last checkpoint.
* Tune's experiment-state save period is Ray's automatic one.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ...errors import ConfigError
from ..results import TrialRecord
from ..spec import SweepSpec
from .callback import AbortStopper, ResultsCallback
from .context import SweepContext
from .scheduler import PersistentASHA
from .searcher import DefineByRun, SweepSearcher, build_sampler
from .trial import trial_fn

__all__ = ["run_tune", "build_pieces", "effective_concurrency"]

log = logging.getLogger("lesionsweep.sweep")


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


def effective_concurrency(spec: SweepSpec) -> int:
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


def build_pieces(ctx: SweepContext) -> tuple[SweepSearcher, TrialScheduler, ResultsCallback]:
    """The searcher, scheduler and results callback of one driver run, bound to ``ctx``."""
    spec = ctx.spec
    single = not spec.objective.multi
    searcher = SweepSearcher(
        ctx,
        space=DefineByRun(spec.spaces),
        metric=spec.objective.metric if single else list(spec.objective.metrics),
        mode=spec.objective.mode if single else list(spec.objective.modes),
        sampler=build_sampler(spec),
    )
    es = spec.early_stopping
    scheduler: TrialScheduler
    if es.enabled:
        scheduler = PersistentASHA(
            ctx,
            metric=str(es.metric),
            mode=str(es.mode),
            max_t=es.max_t or spec.max_epochs(),
            grace_period=es.grace_period,
            reduction_factor=es.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return searcher, scheduler, ResultsCallback(ctx)


def _tuner(ctx: SweepContext) -> tune.Tuner:
    spec, loc = ctx.spec, ctx.location
    searcher, scheduler, callback = build_pieces(ctx)
    return tune.Tuner(
        _trainable(spec, ctx.root),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.budget.trials,
            max_concurrent_trials=effective_concurrency(spec),
            time_budget_s=spec.budget.time_s,
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=loc.name,
            storage_path=loc.storage,
            callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],
            stop=AbortStopper(ctx),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            sync_config=tune.SyncConfig(sync_artifacts=not loc.is_local),
            verbose=0,
        ),
    )


def _restored_tuner(ctx: SweepContext, retry_failed: bool) -> tune.Tuner:
    loc = ctx.location
    if not tune.Tuner.can_restore(loc.root):
        raise ConfigError(f"{loc.root}: no Ray Tune experiment state to resume from")
    tuner = tune.Tuner.restore(
        loc.root,
        trainable=_trainable(ctx.spec, ctx.root),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=retry_failed,
    )
    # Ray has no public hook to re-bind pickled callbacks/searchers; the Tuner's internal
    # configs are the one place to swap in this run's pieces (checked against Ray 2.60).
    internal = tuner._local_tuner
    assert internal is not None
    searcher, scheduler, callback = build_pieces(ctx)
    tc, rc = internal._tune_config, internal._run_config
    tc.search_alg, tc.scheduler = searcher, scheduler
    tc.max_concurrent_trials = effective_concurrency(ctx.spec)
    rc.callbacks = [callback, JsonLoggerCallback(), CSVLoggerCallback()]
    rc.stop = AbortStopper(ctx)
    rc.failure_config = tune.FailureConfig(max_failures=ctx.spec.max_failures)
    return tuner


def _quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # we add JSON + CSV ourselves
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0: no Tune tables, our lines only
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    # a restored, already finished trial or a deterministic failure reports no objective:
    # never fatal for the sweep (the trial checks the objective metric itself)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
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
    ctx = SweepContext(spec=spec, root=root, progress=progress)
    tuner = _restored_tuner(ctx, retry_failed) if restore else _tuner(ctx)
    tuner.fit()
    callback: ResultsCallback = ctx.callback
    records = sorted(callback.store.trials.values(), key=lambda r: r.trial_id)
    abort = callback.abort_reason
    interrupted = abort is None and (
        any(r.status in ("pending", "running") for r in records)
        or (spec.budget.time_s is None and len(records) < spec.budget.trials)
    )
    return records, interrupted, abort
