"""The state one sweep driver run shares between its Ray pieces, passed down explicitly.

The searcher, the scheduler and the results callback are pickled into Tune's experiment state
(``tuner.pkl``, ``searcher-state-*.pkl``); a :class:`SweepContext` never is. The driver builds a
context per run (fresh sweep or resume) and binds it into freshly built pieces, so a resumed or
copied sweep folder always works in its own folder (never in the path stored in a pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import SweepSpec
from ..storage import SweepLocation

__all__ = ["SweepContext", "RUNS_DIR", "TRAIN_RUNS_DIR", "ASHA_STATE_FILE", "JOURNAL_FILE"]

RUNS_DIR = "runs"
TRAIN_RUNS_DIR = "train_runs"
ASHA_STATE_FILE = "asha_state.jsonl"
JOURNAL_FILE = "optuna.journal"


@dataclass
class SweepContext:
    """One driver run of one sweep.

    Attributes:
        spec: the sweep spec.
        root: the sweep folder (local absolute path or URI) this run works in.
        progress: print progress lines.
        pruned: trial ids ASHA stopped before their last epoch (shared by the scheduler, the
            searcher and the results callback).
        study: the Optuna study (set by the searcher once it exists).
        callback: the results callback of this run (set when it is built).
        searcher: the searcher of this run (set when it is built).
    """

    spec: SweepSpec
    root: str
    progress: bool = True
    pruned: set[str] = field(default_factory=set)
    study: Any = None
    callback: Any = None
    searcher: Any = None

    @property
    def location(self) -> SweepLocation:
        return SweepLocation(self.root)

    def run_dir(self, trial_id: str) -> str:
        """A trial's run folder relative to the sweep root (the ``trials.parquet`` value)."""
        return f"{RUNS_DIR}/{trial_id}"

    def run_path(self, trial_id: str) -> str:
        """A trial's run folder in this sweep (absolute path or URI)."""
        return self.location.join(RUNS_DIR, trial_id)
