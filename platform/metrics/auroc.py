"""Image-level classification AUROC: per class, macro and micro (scikit-learn ``roc_auc_score``).

Conventions:

* ``scores`` are float ``[N, K]`` (logits or probabilities: AUROC only depends on the ranking,
  and logits avoid the ties a saturated float32 sigmoid creates).
* ``targets`` are 0/1 ``[N, K]``; ``target_mask`` (optional, ``[N, K]``) is 1 where the label is
  known. Unknown entries are left out of every AUROC.
* A class whose known labels take a single value (all 0 or all 1, or none known) has an
  undefined AUROC: it is reported as NaN and **left out of the macro mean**; ``auroc_num_classes``
  says how many classes the macro mean is over. The micro AUROC pools every known
  (image, class) entry into one binary problem; it is NaN if the pool has a single label value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import MetricInputError, nanmean, to_numpy

__all__ = ["auroc_per_class", "auroc_micro", "AurocEvaluator"]


def _prepare(
    scores: Any, targets: Any, target_mask: Any | None, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = to_numpy(scores, np.float64)
    t = to_numpy(targets, np.float64)
    if s.ndim != 2 or s.shape != t.shape:
        raise MetricInputError(
            f"{metric}: scores and targets must both be [N, K]; got {s.shape} and {t.shape}"
        )
    m = np.ones_like(t, dtype=bool) if target_mask is None else to_numpy(target_mask) > 0.5
    if m.shape != t.shape:
        raise MetricInputError(f"{metric}: target_mask shape {m.shape} != targets {t.shape}")
    if not np.isfinite(s[m]).all():
        raise MetricInputError(f"{metric}: scores contain NaN or inf at known labels")
    tk = t[m]
    if tk.size and not np.isin(tk, (0.0, 1.0)).all():
        raise MetricInputError(f"{metric}: known targets must be 0 or 1, got {np.unique(tk)}")
    return s, t, m


def _binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    if y.size == 0 or y.min() == y.max():
        return math.nan
    from sklearn.metrics import roc_auc_score  # deferred: sklearn takes seconds to import

    return float(roc_auc_score(y, s))


def auroc_per_class(scores: Any, targets: Any, target_mask: Any | None = None) -> np.ndarray:
    """AUROC of each class over its known labels.

    Args:
        scores: float ``[N, K]``.
        targets: 0/1 ``[N, K]``.
        target_mask: optional ``[N, K]``, 1 where the label is known.

    Returns:
        float64 ``[K]``; NaN for a class whose known labels have a single value.
    """
    s, t, m = _prepare(scores, targets, target_mask, "AUROC")
    return np.array([_binary_auroc(t[m[:, k], k], s[m[:, k], k]) for k in range(s.shape[1])])


def auroc_micro(scores: Any, targets: Any, target_mask: Any | None = None) -> float:
    """Micro AUROC: every known (image, class) entry pooled into one binary problem."""
    s, t, m = _prepare(scores, targets, target_mask, "AUROC")
    return _binary_auroc(t[m], s[m])


class AurocEvaluator:
    """Accumulates image-level scores and reports per-class, macro and micro AUROC.

    Args:
        class_names: the K class names (keys ``auroc/<name>``).
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []

    def accumulate(self, scores: Any, targets: Any, target_mask: Any | None = None) -> None:
        """Add a batch: ``scores`` float ``[B, K]``, ``targets`` 0/1 ``[B, K]``, optional mask."""
        s, t, m = _prepare(scores, targets, target_mask, "AUROC")
        if s.shape[1] != len(self.class_names):
            raise MetricInputError(
                f"AUROC: scores have {s.shape[1]} classes, expected {len(self.class_names)}"
            )
        self._scores.append(s)
        self._targets.append(t)
        self._masks.append(m)

    def compute(self) -> dict[str, float]:
        """Return ``auroc_macro``, ``auroc_micro``, ``auroc_num_classes`` and ``auroc/<class>``.

        With nothing accumulated every value is NaN (``auroc_num_classes`` is 0).
        """
        k = len(self.class_names)
        if self._scores:
            s = np.concatenate(self._scores)
            t = np.concatenate(self._targets)
            m = np.concatenate(self._masks)
            per_class = auroc_per_class(s, t, m)
            micro = auroc_micro(s, t, m)
        else:
            per_class = np.full(k, math.nan)
            micro = math.nan
        out = {
            "auroc_macro": nanmean(per_class),
            "auroc_micro": micro,
            "auroc_num_classes": float(np.isfinite(per_class).sum()),
        }
        for name, v in zip(self.class_names, per_class, strict=True):
            out[f"auroc/{name}"] = float(v)
        return out
