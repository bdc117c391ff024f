"""The one "is this value better" comparison, for every place that picks or ranks by an objective
(the trainer's best epoch, the WSMIS runner, the sweep's summary, progress, results and report).

``mode`` is ``"max"`` or ``"min"``. A non-finite value (NaN, inf, or None) never improves on
anything; anything finite improves on nothing (``None``) or on a non-finite best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["best_index", "is_better", "order_sign"]


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def is_better(value: float | None, best: float | None, mode: str) -> bool:
    """Does ``value`` improve on ``best`` under ``mode`` (strictly; ties keep the first)?"""
    if not _finite(value):
        return False
    if not _finite(best):
        return True
    assert value is not None and best is not None
    return value > best if mode == "max" else value < best


def best_index(values: Sequence[float | None], mode: str) -> int:
    """Index of the first best finite value; the last index when none is finite."""
    bi, best = len(values) - 1, None
    for i, v in enumerate(values):
        if is_better(v, best, mode):
            best, bi = v, i
    return bi


def order_sign(mode: str) -> float:
    """The factor that makes ascending sort order best-first: ``sorted(key=sign * value)``."""
    return -1.0 if mode == "max" else 1.0
