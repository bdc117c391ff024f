"""The sweep platform: Ray Tune + Optuna over the single-run trainer.

Plain-Python modules (no Ray import): :mod:`.spaces` (search spaces as validated value objects),
:mod:`.spec` (the sweep spec), :mod:`.results` (Parquet tables), :mod:`.export` (best configs),
:mod:`.hparams` (TensorBoard HParams sessions), :mod:`.summary` (progress and summary),
:mod:`.storage` (local / shared / object-store folders) and :mod:`.commands` (the CLI
functions). :mod:`.backend` is the only module that imports ``ray.tune``, ``ray.train`` and
``optuna``; it is imported only when a sweep runs.

Layout of a sweep folder ``<storage>/<name>/``::

    sweep.yaml                  the resolved spec (spaces inlined): what `resume` runs
    trials.parquet              one row per trial
    epochs.parquet              one row per trial and epoch
    runs/<trial_id>/            each trial's run folder: config.yaml, checkpoints/,
                                metrics.jsonl, tensorboard/ (curves, overlays, HParams session)
    exports/                    best configs (best.yaml, best_<method>.yaml, pareto_*.yaml)
    asha_state.json             ASHA rungs and pruned trials (survive a resume)
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
