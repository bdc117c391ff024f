"""Bootstrap over images: confidence intervals for any :class:`LocalizationSuite` metric.

The evaluated model's per-image outputs (logits ``[N, K]`` and maps ``[N, K, h, w]``, as
:func:`lesionsweep.training.evaluate` saves them with ``outputs_path``) are re-scored on
resamples of the images drawn with replacement, every metric (AUROC, point accuracy, T(IoBB),
MaxBoxAccV2, PxAP, ...) by its own definition, with no per-metric shortcut.

Speed: every evaluator of the suite keeps an *additive* state (counters and histograms that
accumulate sums over images; AUROC keeps lists of scores). So each image is scored once, alone,
and its contribution to the state (after minus before: an array difference, or the list entries
it appended) is kept. A resample's state is the empty state plus the contributions weighted by
how often each image was drawn (lists repeated as often), and ``compute()`` runs on it. Drawing
every image once reproduces the full evaluation exactly (a test checks that). Runs evaluated on
the same split (seeds, configs of one method) share the resampled indices, so the distribution
is that of their *mean*: the method's uncertainty over images.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.types import Sample, collate
from .suite import LocalizationSuite

__all__ = ["RunOutputs", "BootstrapCI", "bootstrap_suite", "ImageContributions"]

Path_ = tuple[Any, ...]


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


def _flatten(obj: Any, prefix: Path_ = ()) -> dict[Path_, Any]:
    """State leaves (numeric arrays, numbers, lists) of an evaluator, by attribute path."""
    out: dict[Path_, Any] = {}
    items = obj.items() if isinstance(obj, dict) else vars(obj).items()
    for k, v in items:
        p = (*prefix, k)
        if isinstance(v, np.ndarray):
            if v.dtype.kind in "iuf":
                out[p] = v.copy()
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[p] = v
        elif isinstance(v, list):
            out[p] = list(v)
        elif isinstance(v, dict):
            out.update(_flatten(v, p))
        elif hasattr(v, "__dict__") and type(v).__module__.startswith("lesionsweep."):
            out.update(_flatten(v, p))
    return out


def _assign(root: Any, path: Path_, value: Any) -> None:
    obj = root
    for k in path[:-1]:
        obj = obj[k] if isinstance(obj, dict) else getattr(obj, k)
    if isinstance(obj, dict):
        obj[path[-1]] = value
    else:
        setattr(obj, path[-1], value)


class ImageContributions:
    """Each image's additive contribution to a suite's evaluator states (see module docstring).

    Args:
        suite: the suite to score with (it is reset and used; afterwards it holds a resample).
        samples: the split's items in dataset order.
        run: the run's per-image outputs on them.
    """

    def __init__(self, suite: LocalizationSuite, samples: Sequence[Sample], run: RunOutputs):
        if run.logits.shape[0] != len(samples) or run.maps.shape[0] != len(samples):
            raise ValueError(
                f"bootstrap: outputs for {run.logits.shape[0]} images, the split has {len(samples)}"
            )
        self.suite = suite
        suite.reset()
        self.base = _flatten(suite)
        arrays: dict[Path_, list[np.ndarray]] = {}
        scalars: dict[Path_, list[float]] = {}
        self.lists: dict[Path_, list[list[Any]]] = {}
        for i, s in enumerate(samples):
            suite.reset()
            suite.accumulate(
                torch.from_numpy(run.logits[i : i + 1]),
                torch.from_numpy(run.maps[i : i + 1]),
                collate([s]),
                run.map_kind,
            )
            after = _flatten(suite)
            for p, b in self.base.items():
                a = after[p]
                if isinstance(b, np.ndarray):
                    arrays.setdefault(p, []).append(a - b)
                elif isinstance(b, list):
                    self.lists.setdefault(p, []).append(a[len(b) :])
                else:
                    scalars.setdefault(p, []).append(a - b)
        # leaves no image changes (thresholds, class names, sizes) stay as reset() leaves them
        self.arrays = {p: np.stack(v) for p, v in arrays.items() if any(d.any() for d in v)}
        self.scalars = {p: np.asarray(v, dtype=np.float64) for p, v in scalars.items() if any(v)}
        self.lists = {p: v for p, v in self.lists.items() if any(v)}
        self.n = len(samples)

    def compute(self, idx: np.ndarray) -> dict[str, float]:
        """The suite's metrics on the images ``idx`` (with repeats), e.g. a bootstrap draw."""
        w = np.bincount(idx, minlength=self.n)
        suite = self.suite
        suite.reset()
        for p, d in self.arrays.items():
            b = self.base[p]
            _assign(suite, p, (b + np.tensordot(w, d, axes=1)).astype(b.dtype, copy=False))
        for p, d in self.scalars.items():
            b = self.base[p]
            v = b + float(w @ d)
            _assign(suite, p, type(b)(round(v)) if isinstance(b, int) else v)
        for p, per_image in self.lists.items():
            _assign(suite, p, [*copy.copy(self.base[p]), *[e for i in idx for e in per_image[i]]])
        return suite.compute()


def bootstrap_suite(
    make_suite: Callable[[], LocalizationSuite],
    samples: Sequence[Sample],
    runs: Sequence[RunOutputs],
    metrics: Sequence[str],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
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
    contribs = [ImageContributions(make_suite(), samples, r) for r in runs]
    n = len(samples)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        outs = [c.compute(idx) for c in contribs]
        for m in metrics:
            draws[m].append(float(np.mean([float(o.get(m, np.nan)) for o in outs])))
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
