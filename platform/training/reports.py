"""What training hands back: the per-epoch report and the result of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EpochReport", "TrainResult"]


@dataclass
class EpochReport:
    """What the reporter receives after each epoch.

    Attributes:
        epoch: 1-based epoch number.
        metrics: the epoch's flat metrics (see the module docstring); identical on every rank.
        checkpoint_dir: the folder holding this epoch's ``last.pt`` (and ``best.pt``) on rank 0;
            ``None`` on other ranks.
        is_best: this epoch improved ``eval.select_metric``.
    """

    epoch: int
    metrics: dict[str, float]
    checkpoint_dir: Path | None
    is_best: bool


@dataclass
class TrainResult:
    """The outcome of :func:`run_training`.

    Attributes:
        final: metrics of the last epoch.
        best: metrics of the best epoch (by ``eval.select_metric``).
        best_epoch: its 1-based number.
        epochs_run: epochs completed in total (including those before a resume).
        history: every epoch's metrics, in order.
        wall_time_s: wall time of this call.
        out_dir: the run folder.
        checkpoint_bytes: bytes of the checkpoint files the run kept (after the policy).
    """

    final: dict[str, float]
    best: dict[str, float]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    out_dir: Path = Path(".")
    checkpoint_bytes: int = 0
