"""The Ray Tune + Optuna backend of a sweep: a thin front of the private package :mod:`._ray`.

Only this module and ``sweep/_ray/`` import Ray (a test checks it). The pieces:

* :mod:`._ray.session` — start/connect and end the Ray session;
* :mod:`._ray.context` — :class:`SweepContext`, the state one driver run passes down explicitly;
* :mod:`._ray.searcher` — the Optuna searcher over the durable study (``optuna.journal``);
* :mod:`._ray.tpe` — TPE with a bounded history and each suggest's O(trials) work done once;
* :mod:`._ray.scheduler` — ASHA with rungs persisted in ``asha_state.jsonl``;
* :mod:`._ray.trial` — the trial function (Tune gets only the objective/early-stopping metrics);
* :mod:`._ray.callback` — trial rows, HParams sessions, progress, reconciliation on resume;
* :mod:`._ray.driver` — builds the (fresh or restored) Tuner and runs it.
"""

from __future__ import annotations

from ._ray.callback import ResultsCallback
from ._ray.context import ASHA_STATE_FILE, JOURNAL_FILE, RUNS_DIR, SweepContext
from ._ray.driver import build_pieces, run_tune
from ._ray.scheduler import PersistentASHA
from ._ray.searcher import (
    PARAMS_KEY,
    SPACE_KEY,
    DefineByRun,
    RecentTPESampler,
    SweepSearcher,
    build_sampler,
    build_storage,
)
from ._ray.session import init_ray, shutdown_ray

__all__ = [
    "SPACE_KEY",
    "PARAMS_KEY",
    "ASHA_STATE_FILE",
    "JOURNAL_FILE",
    "RUNS_DIR",
    "SweepContext",
    "build_sampler",
    "build_storage",
    "build_pieces",
    "RecentTPESampler",
    "DefineByRun",
    "SweepSearcher",
    "PersistentASHA",
    "ResultsCallback",
    "init_ray",
    "shutdown_ray",
    "run_tune",
]
