"""The sweep platform: Ray Tune + Optuna over the single-run trainer.

Plain-Python modules (no Ray import): :mod:`.spaces` (search spaces as validated value objects),
:mod:`.spec` (the sweep spec), :mod:`.results` (record types, schemas, readers) and
:mod:`.store` (per-trial fragments, compaction), :mod:`.export` (best configs), :mod:`.hparams`
(TensorBoard HParams sessions), :mod:`.summary` (progress and summary), :mod:`.storage` (local /
shared / object-store folders) and :mod:`.commands` (the CLI functions). Only :mod:`.backend`
and the private package ``_ray`` (session, context, searcher, scheduler, trial, callback,
driver) import Ray; they are imported only when a sweep runs.

Layout of a sweep folder ``<storage>/<name>/``::

    sweep.yaml                  the resolved spec (spaces inlined): what `resume` runs
    trials.parquet              one row per trial (compacted; run_dir relative: runs/<id>)
    epochs.parquet              one row per trial and epoch (compacted)
    results/trials/<id>.parquet live per-trial fragments until the sweep/resume ends or
    results/epochs/<id>.parquet `lesionsweep compact`; read_table() merges root + fragments
    optuna.journal              the Optuna study (JournalStorage; optuna-dashboard opens it)
    asha_state.jsonl            ASHA rung records and pruned trials, appended per decision
    runs/<trial_id>/            each trial's run folder: config.yaml, checkpoints/,
                                metrics.jsonl, tensorboard/ (curves, overlays, HParams session)
    lost_runs/<trial_id>/       run folders of trials Tune lost with a killed driver mid-way
    exports/                    best configs (best.yaml, best_<method>.yaml, pareto_*.yaml)
    train_runs/                 Ray Train state of multi-worker trials
    trial_<id>/, tuner.pkl, experiment_state-*.json, searcher-state-*.pkl   Ray Tune's own files

``tensorboard --logdir <storage>/<name>`` shows every trial's curves, map overlays and the
HParams dashboard.
"""

from __future__ import annotations

from .commands import export_configs, resume_sweep, run_sweep
from .spaces import SearchSpace, SpaceSet, load_space
from .spec import SweepSpec, load_spec
from .summary import SweepSummary

__all__ = [
    "SearchSpace",
    "SpaceSet",
    "SweepSpec",
    "SweepSummary",
    "export_configs",
    "load_space",
    "load_spec",
    "resume_sweep",
    "run_sweep",
]
