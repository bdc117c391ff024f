"""Image-level classification losses, combinable with any method.

Every loss is an ``nn.Module`` called as ``loss(logits, targets, target_mask=None)`` with
logits/targets float ``[B, K]`` and an optional ``[B, K]`` mask (1 = label known, 0 = ignore,
e.g. CheXpert U-Ignore). It returns a scalar. Losses are registered by name and built with
:func:`create_loss`, which refuses unknown kwargs.

* ``bce``: mean binary cross-entropy over known labels.
* ``weighted_bce``: PCAM's per-batch positive re-weighting (jfhealthcare/Chexpert
  ``batch_weight``): per class, ``pos_weight = (n - n_pos) / n_pos`` over the batch's known
  labels; a class with no positive in the batch contributes 0 (as in the authors' code). Summed
  over classes (the code sums task losses), averaged over the batch.
* ``wcel``: Wang et al. 2017 W-CEL: ``beta_P = (|P| + |N|) / |P|`` on positives and
  ``beta_N = (|P| + |N|) / |N|`` on negatives, counted per batch over all known labels.
* ``focal``: Lin et al.'s focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (alpha < 0 disables
  the class-balance factor).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

#: the loss registry (see :class:`~lesionsweep.methods.registry.Registry` for its contract)
LOSSES: Registry[nn.Module] = Registry("loss", base=nn.Module, plural="losses")

L = TypeVar("L", bound=type[nn.Module])


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator: register a loss under ``name`` (duplicates are refused)."""
    return LOSSES.register(name)


def loss_names() -> list[str]:
    """Sorted names of the registered losses."""
    return LOSSES.names()


def loss_params(name: str) -> dict[str, inspect.Parameter]:
    """Constructor parameters of a loss; an unknown name raises :class:`UnknownNameError`."""
    return LOSSES.params(name)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss; unknown kwargs raise ``TypeError`` listing the allowed ones."""
    return LOSSES.create(name, **kwargs)


def _mask(targets: torch.Tensor, target_mask: torch.Tensor | None) -> torch.Tensor:
    if target_mask is None:
        return torch.ones_like(targets)
    return target_mask.to(targets.dtype)


@register_loss("bce")
class BCELoss(nn.Module):
    """Mean BCE-with-logits over known labels."""

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        m = _mask(targets, target_mask)
        per = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
        return (per * m).sum() / m.sum().clamp_min(1.0)


@register_loss("weighted_bce")
class BatchWeightedBCELoss(nn.Module):
    """PCAM's per-batch, per-class positive re-weighting (see module docstring)."""

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        m = _mask(targets, target_mask)
        t = targets.float()
        n = m.sum(0)
        n_pos = (t * m).sum(0)
        has_pos = n_pos > 0
        pos_weight = torch.where(has_pos, (n - n_pos) / n_pos.clamp_min(1.0), torch.zeros_like(n))
        per = F.binary_cross_entropy_with_logits(
            logits.float(), t, pos_weight=pos_weight.detach(), reduction="none"
        )
        per = per * m * has_pos.to(per.dtype)[None, :]
        return per.sum(1).mean()


@register_loss("wcel")
class WCELoss(nn.Module):
    """Wang et al. 2017 weighted cross-entropy (W-CEL), counts per batch."""

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        m = _mask(targets, target_mask)
        t = targets.float()
        n_pos = (t * m).sum()
        n_neg = ((1 - t) * m).sum()
        total = n_pos + n_neg
        beta_p = torch.where(n_pos > 0, total / n_pos.clamp_min(1.0), torch.zeros_like(total))
        beta_n = torch.where(n_neg > 0, total / n_neg.clamp_min(1.0), torch.zeros_like(total))
        x = logits.float()
        loss = beta_p * t * F.softplus(-x) + beta_n * (1 - t) * F.softplus(x)
        return (loss * m).sum() / m.sum().clamp_min(1.0)


@register_loss("focal")
class FocalLoss(nn.Module):
    """Sigmoid focal loss.

    Args:
        gamma: focusing parameter (0 gives BCE when alpha < 0).
        alpha: weight of positives in [0, 1]; a negative value disables the alpha factor.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = -1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha > 1:
            raise ValueError(f"focal alpha must be <= 1 (negative disables it), got {alpha}")
        self.gamma = gamma
        self.alpha = alpha

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        m = _mask(targets, target_mask)
        x, t = logits.float(), targets.float()
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p = torch.sigmoid(x)
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t).pow(self.gamma)
        if self.alpha >= 0:
            loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
        return (loss * m).sum() / m.sum().clamp_min(1.0)
