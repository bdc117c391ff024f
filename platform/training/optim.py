"""Optimisers and learning-rate schedules built from :class:`~lesionsweep.config.OptimConfig`.

The schedule is one small object (:class:`LRSchedule`) that sets every parameter group's learning
rate from ``base_lr * warmup(step) * shape(step) * plateau_scale``:

* ``warmup``: linear from ``1 / (warmup_steps + 1)`` to 1 over the first ``warmup_epochs``
  epochs, advanced per optimiser step (applies to every schedule).
* ``shape``: ``none`` → 1; ``step`` → ``gamma ** (epoch // step_size)`` (``epoch`` is the 0-based
  index of the epoch being trained); ``cosine`` → half a cosine from 1 to 0 over the steps after
  the warm-up, advanced per optimiser step; ``plateau`` → 1.
* ``plateau_scale``: for ``plateau`` only, multiplied by ``factor`` when the validation loss has
  not improved (relative threshold 1e-4, like ``ReduceLROnPlateau``) for more than ``patience``
  epochs.

Its state is a dict of Python numbers, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import ConfigError

__all__ = ["build_optimizer", "LRSchedule"]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weights of rank >= 2 only (no decay on biases and norm parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build ``adam``, ``adamw`` or ``sgd`` over the model's trainable parameters.

    Weight decay applies to parameters with two or more dimensions (conv/linear weights); biases
    and normalisation parameters are not decayed.
    """
    groups = _param_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ConfigError("the model has no trainable parameters")
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise ConfigError(f"optim.name = {cfg.name!r} is not allowed; choose one of: adam, adamw, sgd")


class LRSchedule:
    """Per-step learning-rate schedule with warm-up and an optional plateau rule.

    Call :meth:`step` after every optimiser step and :meth:`end_epoch` after each epoch's
    validation. The learning rate for the first step is set on construction.

    Args:
        optimizer: the optimiser whose groups' ``lr`` is set (their initial ``lr`` is the base).
        cfg: the optimiser config (``schedule``, ``step_size``, ``gamma``, ``warmup_epochs``,
            ``patience``, ``factor``).
        epochs: total number of epochs of the run.
        steps_per_epoch: optimiser steps per epoch (>= 1).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
    ) -> None:
        if cfg.schedule not in ("none", "step", "cosine", "plateau"):
            raise ConfigError(
                f"optim.schedule = {cfg.schedule!r} is not allowed; "
                "choose one of: none, step, cosine, plateau"
            )
        if cfg.schedule == "step" and cfg.step_size < 1:
            raise ConfigError(f"optim.step_size must be >= 1, got {cfg.step_size}")
        if cfg.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total_steps = max(1, int(epochs)) * self.steps_per_epoch
        self.warmup_steps = int(cfg.warmup_epochs) * self.steps_per_epoch
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.plateau_scale = 1.0
        self.best_loss = math.inf
        self.bad_epochs = 0
        self._apply()

    def factor(self, step: int | None = None) -> float:
        """Multiplier of the base learning rate for optimiser step ``step`` (0-based)."""
        s = self.step_count if step is None else step
        f = 1.0
        if s < self.warmup_steps:
            f *= (s + 1) / (self.warmup_steps + 1)
        sched = self.cfg.schedule
        if sched == "step":
            f *= self.cfg.gamma ** ((s // self.steps_per_epoch) // self.cfg.step_size)
        elif sched == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (s - self.warmup_steps) / span))
            f *= 0.5 * (1.0 + math.cos(math.pi * t))
        elif sched == "plateau":
            f *= self.plateau_scale
        return f

    def _apply(self) -> None:
        f = self.factor()
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * f

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self) -> None:
        """Advance one optimiser step and set the next step's learning rate."""
        self.step_count += 1
        self._apply()

    def end_epoch(self, val_loss: float | None) -> None:
        """Apply the plateau rule on the epoch's validation loss (no-op for other schedules)."""
        if self.cfg.schedule != "plateau" or val_loss is None or not math.isfinite(val_loss):
            return
        best = self.best_loss
        if math.isinf(best) or val_loss < best - abs(best) * 1e-4:
            self.best_loss = float(val_loss)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.cfg.patience:
                self.plateau_scale *= self.cfg.factor
                self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Python numbers only (safe for ``weights_only`` loading)."""
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best_loss = float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()
