"""Shared input checks and array conversion for the metrics.

Every metric takes numpy arrays or torch tensors and converts them once with :func:`to_numpy`.
Bad maps (NaN/inf, values outside the range a metric needs, wrong rank) raise
:class:`MetricInputError`, a ``ValueError`` whose message names the metric and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import LesionSweepError

__all__ = ["MetricInputError", "to_numpy", "check_maps", "nanmean", "as_box_list"]


class MetricInputError(LesionSweepError, ValueError):
    """A metric got inputs it cannot score (NaN/inf maps, out-of-range values, wrong shapes)."""


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """Convert a tensor / array / sequence to a numpy array (detached, on CPU).

    Args:
        x: ``torch.Tensor`` (any device, any float dtype incl. bf16/fp16), ``np.ndarray`` or a
            nested sequence.
        dtype: optional numpy dtype of the result.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        x = t.cpu().numpy()
    arr = np.asarray(x)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def check_maps(
    maps: np.ndarray,
    metric: str,
    ndim: int = 3,
    value_range: tuple[float, float] | None = None,
) -> None:
    """Raise :class:`MetricInputError` unless ``maps`` has rank ``ndim`` and finite values.

    Args:
        maps: the score maps, e.g. ``[N, H, W]``.
        metric: the metric's name, put in the message.
        ndim: the required rank.
        value_range: if given, every value must lie in this closed interval.
    """
    if maps.ndim != ndim:
        raise MetricInputError(
            f"{metric}: expected {ndim}-D score maps, got shape {tuple(maps.shape)}"
        )
    if maps.size == 0:
        return
    if not np.issubdtype(maps.dtype, np.number):
        raise MetricInputError(f"{metric}: score maps must be numeric, got dtype {maps.dtype}")
    if not np.isfinite(maps).all():
        n_nan = int(np.isnan(maps).sum())
        n_inf = int(np.isinf(maps).sum())
        raise MetricInputError(
            f"{metric}: score maps must be finite; got {n_nan} NaN and {n_inf} inf values"
        )
    if value_range is not None:
        lo, hi = value_range
        mn, mx = float(maps.min()), float(maps.max())
        if mn < lo or mx > hi:
            raise MetricInputError(
                f"{metric}: score maps must lie in [{lo}, {hi}]; got min={mn:.6g}, max={mx:.6g}"
            )


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN when there are none (no warning)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def as_box_list(boxes: Sequence[Any], metric: str, n: int) -> list[np.ndarray]:
    """Convert ``n`` per-item box arrays to float64 ``[G_i, 4]`` numpy arrays.

    Raises:
        MetricInputError: if the count differs from ``n`` or an item is not ``[G, 4]``.
    """
    if len(boxes) != n:
        raise MetricInputError(f"{metric}: got {len(boxes)} box arrays for {n} maps")
    out = []
    for i, b in enumerate(boxes):
        arr = to_numpy(b, np.float64)
        if arr.size == 0:
            arr = np.zeros((0, 4), dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise MetricInputError(
                f"{metric}: boxes of item {i} must be [G, 4] (x0, y0, x1, y1), "
                f"got shape {tuple(arr.shape)}"
            )
        if not np.isfinite(arr).all():
            raise MetricInputError(f"{metric}: boxes of item {i} contain non-finite values")
        out.append(arr)
    return out
