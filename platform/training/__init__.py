"""Single-run training and evaluation (no Ray: torch + timm only).

* :func:`run_training` — train one :class:`~lesionsweep.config.RunConfig`, validating every epoch.
* :func:`evaluate` — evaluate a run folder / checkpoint on any split (the only path to test).
"""

from __future__ import annotations

from .checkpoint import finalize_checkpoints, load_checkpoint, save_checkpoint
from .evaluate import evaluate, evaluate_model, resolve_checkpoint
from .optim import LRSchedule, build_optimizer
from .runtime import (
    NORM_MEAN,
    NORM_STD,
    autocast_dtype,
    build_method,
    check_training_split,
    prepare_images,
    resolve_device,
    seed_everything,
)
from .tensorboard import OverlayItem, TensorBoardLogger, render_strip
from .trainer import EpochReport, Trainer, TrainResult, run_training

# the shipped staged runners register themselves (after the trainer they build on)
from . import wsmis  # noqa: E402,F401  isort: skip

__all__ = [
    "EpochReport",
    "LRSchedule",
    "NORM_MEAN",
    "NORM_STD",
    "OverlayItem",
    "TensorBoardLogger",
    "TrainResult",
    "Trainer",
    "autocast_dtype",
    "build_method",
    "build_optimizer",
    "check_training_split",
    "evaluate",
    "evaluate_model",
    "load_checkpoint",
    "finalize_checkpoints",
    "prepare_images",
    "render_strip",
    "resolve_checkpoint",
    "resolve_device",
    "run_training",
    "save_checkpoint",
    "seed_everything",
]
