"""Bootstrap over images: confidence intervals for any :class:`LocalizationSuite` metric.

The evaluated model's per-image outputs (logits ``[N, K]`` and maps ``[N, K, h, w]``, as
:func:`lesionsweep.training.evaluate` saves them with ``outputs_path``) are re-scored on
resamples of the images drawn with replacement: each resample runs the same suite on the drawn
images (an image drawn twice counts twice), so every metric — AUROC, point accuracy, T(IoBB),
MaxBoxAccV2, PxAP — is bootstrapped by its own definition, with no per-metric shortcut. Several
runs evaluated on the same split (seeds, configs of one method) share the resampled indices, so
the bootstrap distribution of their *mean* is the method's uncertainty over images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.types import Sample, collate
from .suite import LocalizationSuite

__all__ = ["RunOutputs", "BootstrapCI", "bootstrap_suite"]


@dataclass
class RunOutputs:
    """One run's per-image outputs on a split, in the dataset's order.

    Attributes:
        logits: float32 ``[N, K]``.
        maps: float32 ``[N, K, h, w]``.
        map_kind: ``logits``, ``probabilities`` or ``normalized``.
    """

    logits: np.ndarray
    maps: np.ndarray
    map_kind: str


@dataclass(frozen=True)
class BootstrapCI:
    """A percentile interval: ``low``/``high`` at ``(1 - level) / 2`` and ``(1 + level) / 2``,
    from ``n`` resamples with a finite value."""

    low: float
    high: float
    n: int
    level: float


def bootstrap_suite(
    make_suite: Callable[[], LocalizationSuite],
    samples: Sequence[Sample],
    runs: Sequence[RunOutputs],
    metrics: Sequence[str],
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, BootstrapCI]:
    """Percentile bootstrap CI over images of the mean over ``runs`` of each metric.

    Args:
        make_suite: builds a fresh suite for the split (the same as the evaluation used).
        samples: the split's items in dataset order (``len == N``).
        runs: per-image outputs of each run on those items.
        metrics: suite keys to report (e.g. ``auroc_macro``, ``iobb@0.5``).
        n_boot: resamples.
        level: coverage of the interval.
        seed: seed of the resampling (the same indices for every run).

    Returns:
        metric → :class:`BootstrapCI` (NaN bounds where no resample gave a finite value).
    """
    n = len(samples)
    for r in runs:
        if r.logits.shape[0] != n or r.maps.shape[0] != n:
            raise ValueError(
                f"bootstrap_suite: outputs for {r.logits.shape[0]} images, split has {n}"
            )
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in metrics}
    suite = make_suite()
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        per_run: dict[str, list[float]] = {m: [] for m in metrics}
        for r in runs:
            suite.reset()
            for start in range(0, n, batch_size):
                sel = idx[start : start + batch_size]
                batch = collate([samples[int(i)] for i in sel])
                suite.accumulate(
                    torch.from_numpy(r.logits[sel]),
                    torch.from_numpy(r.maps[sel]),
                    batch,
                    r.map_kind,
                )
            out = suite.compute()
            for m in metrics:
                per_run[m].append(float(out.get(m, np.nan)))
        for m in metrics:
            draws[m].append(float(np.mean(per_run[m])))
    q = ((1.0 - level) / 2.0 * 100.0, (1.0 + level) / 2.0 * 100.0)
    result = {}
    for m, vals in draws.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            result[m] = BootstrapCI(float("nan"), float("nan"), 0, level)
        else:
            lo, hi = np.percentile(arr, q)
            result[m] = BootstrapCI(float(lo), float(hi), int(arr.size), level)
    return result
