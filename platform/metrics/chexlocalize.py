"""CheXlocalize's localization metrics: hit rate (pointing game) and mIoU of binarised maps.

Definitions follow ``rajpurkarlab/cheXlocalize`` (``eval.py``, ``heatmap_to_segmentation.py``,
``tune_heatmap_threshold.py``) and Saporta et al., Nature Machine Intelligence 2022. Every map is
first upsampled bilinearly (``align_corners=False``) to the ground truth's grid (CheXlocalize:
the film's original size; here the delivered ``S x S`` image, where the masks live too).

* **Hit rate** (pointing game). The map's most representative point is its maximum
  (``np.argmax`` of the upsampled map: the first maximum in row-major order). A pair
  (image, class) is a hit when the ground-truth mask is on at that pixel. Scored over every pair
  whose ground-truth mask is non-empty, whatever the model's probability (CheXlocalize's
  ``get_hitrates``: a pair with an empty mask is NaN, every other pair 0 or 1). ``hit_rate/<c>``
  is the mean over class ``c``'s pairs; ``hit_rate`` the mean of the per-class values (classes
  with no scored pair left out).
* **Binarisation** (``heatmap_to_segmentation.py``): the upsampled map is min-max normalised to
  ``[0, 1]``; by default it is scaled to ``uint8(255 * m)`` (truncation, as numpy casts) and
  thresholded with Otsu's method (OpenCV ``THRESH_OTSU``; on = value > Otsu's threshold). With
  per-class thresholds ``t_c`` (option ``thresholds``) a pixel is on when ``m > t_c``. With
  per-class probability cut-offs (option ``prob_cutoffs``) the segmentation is empty whenever
  the model's image-level probability ``sigmoid(logit) < cutoff_c``. A constant map (whose
  normalisation is 0 / 0) gives an empty segmentation.
* **IoU** of a pair: ``|pred & gt| / |pred | gt|``. ``miou`` uses CheXlocalize's default
  **true-positive slice** (``true_pos_only=True``): only pairs where both the ground truth and
  the prediction are non-empty. ``miou_full`` uses the **full set** (``true_pos_only=False``):
  every pair whose union is non-empty (so a false-positive segmentation on a negative image
  scores 0, and an empty prediction on a positive one scores 0). Per class
  (``miou/<c>``, ``miou_full/<c>``) the mean over pairs; the headline is the mean over classes.
* **Threshold tuning** (``tune_heatmap_threshold.py``): per class, the threshold of
  ``np.arange(0.2, 0.8, 0.1)`` (which yields 0.2 ... 0.8, seven values) that maximises the
  true-positive-slice mIoU on the split (the first one on ties). :meth:`tuned_thresholds` returns
  them after a pass over ``val-loc``; give them as ``thresholds`` to score ``test-loc``.

Set of pairs: every image of the split times every class that has localization ground truth
(``DatasetInfo.loc_classes``), as CheXlocalize's ground-truth file holds every CXR and all ten
pathologies, negatives with empty masks. Differences from CheXlocalize's scripts: the maps and
masks live in the delivered ``S x S`` grid rather than the film's original size (masks are
resized with the images), and no bootstrap CI is computed here (the study command does that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from .common import MetricInputError, to_numpy

__all__ = [
    "TUNE_GRID",
    "ChexlocalizeEvaluator",
    "binarize_map",
    "most_representative_point",
    "normalize_map",
    "otsu_segmentation",
]

TUNE_GRID: tuple[float, ...] = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))


def normalize_map(m: np.ndarray) -> np.ndarray | None:
    """Min-max normalise a ``[H, W]`` map to ``[0, 1]`` (float64); None for a constant map."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return None
    return (m - lo) / (hi - lo)


def otsu_segmentation(m: np.ndarray) -> np.ndarray:
    """CheXlocalize's default binarisation of a ``[H, W]`` map (``bool [H, W]``)."""
    norm = normalize_map(m)
    if norm is None:
        return np.zeros(np.shape(m), dtype=bool)
    u8 = (255.0 * norm).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return u8 > t


def binarize_map(m: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Otsu (``threshold=None``) or ``normalised map > threshold``; ``bool [H, W]``."""
    if threshold is None:
        return otsu_segmentation(m)
    norm = normalize_map(m)
    if norm is None:
        return np.zeros(np.shape(m), dtype=bool)
    return norm > threshold


def most_representative_point(m: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the first maximum of a ``[H, W]`` map (row-major ``np.argmax``)."""
    r, c = np.unravel_index(int(np.argmax(m)), np.shape(m))
    return int(r), int(c)


def _per_class(
    names: Sequence[str], localized: Sequence[bool], opt: Mapping[str, float] | None, what: str
) -> list[float | None]:
    opt = dict(opt or {})
    bad = sorted(set(opt) - {n for n, loc in zip(names, localized, strict=True) if loc})
    if bad:
        raise MetricInputError(
            f"CheXlocalize {what}: unknown or unlocalized class(es) {bad}; allowed: "
            f"{[n for n, loc in zip(names, localized, strict=True) if loc]}"
        )
    out: list[float | None] = []
    for n in names:
        v = opt.get(n)
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
            raise MetricInputError(f"CheXlocalize {what} for {n!r} must be in [0, 1], got {v!r}")
        out.append(None if v is None else float(v))
    return out


class ChexlocalizeEvaluator:
    """Accumulates hit rate and mIoU (see the module docstring).

    Args:
        class_names: all class names of the dataset (the map channels), length ``K``.
        localized: per class, whether it has localization ground truth (others are skipped).
        thresholds: optional ``{class: t}`` per-class binarisation thresholds in ``[0, 1]``
            (classes not named use Otsu).
        prob_cutoffs: optional ``{class: p}``: an empty segmentation when the image-level
            probability is below ``p``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        localized: Sequence[bool] | None = None,
        thresholds: Mapping[str, float] | None = None,
        prob_cutoffs: Mapping[str, float] | None = None,
    ) -> None:
        self.names = tuple(class_names)
        self.localized = tuple(localized) if localized is not None else (True,) * len(self.names)
        if len(self.localized) != len(self.names):
            raise MetricInputError("CheXlocalize: localized must have one entry per class")
        self.thresholds = _per_class(self.names, self.localized, thresholds, "thresholds")
        self.cutoffs = _per_class(self.names, self.localized, prob_cutoffs, "prob_cutoffs")
        self.reset()

    def reset(self) -> None:
        k, g = len(self.names), len(TUNE_GRID)
        self.hits = np.zeros(k)
        self.n_hit = np.zeros(k)
        self.iou_tp = np.zeros(k)
        self.n_tp = np.zeros(k)
        self.iou_full = np.zeros(k)
        self.n_full = np.zeros(k)
        self.grid_sum = np.zeros((k, g))
        self.grid_n = np.zeros((k, g))

    def accumulate(self, maps: Any, classes: Any, gt_masks: Any, probabilities: Any) -> None:
        """Add pairs.

        Args:
            maps: float ``[P, H, W]`` maps already upsampled to the masks' grid.
            classes: int ``[P]`` class index of each pair (must be a localized class).
            gt_masks: bool ``[P, H, W]``.
            probabilities: float ``[P]`` image-level probability of each pair's class.
        """
        m = to_numpy(maps)
        g = to_numpy(gt_masks).astype(bool)
        cls = to_numpy(classes).astype(np.int64).reshape(-1)
        prob = to_numpy(probabilities).astype(np.float64).reshape(-1)
        if m.ndim != 3 or g.shape != m.shape or len({cls.shape[0], m.shape[0], prob.shape[0]}) != 1:
            raise MetricInputError(
                f"CheXlocalize: maps {m.shape}, masks {g.shape}, classes {cls.shape} and "
                f"probabilities {prob.shape} must be [P, H, W], [P, H, W], [P], [P]"
            )
        if not np.isfinite(m).all():
            raise MetricInputError("CheXlocalize: maps contain NaN or inf")
        grid = np.asarray(TUNE_GRID)
        for j in range(m.shape[0]):
            c = int(cls[j])
            if not (0 <= c < len(self.names)) or not self.localized[c]:
                raise MetricInputError(f"CheXlocalize: class index {c} is not a localized class")
            mj, gj = m[j], g[j]
            positive = bool(gj.any())
            if positive:
                r, col = most_representative_point(mj)
                self.hits[c] += float(gj[r, col])
                self.n_hit[c] += 1
            cut = self.cutoffs[c]
            if cut is not None and prob[j] < cut:
                seg = np.zeros_like(gj)
            else:
                seg = binarize_map(mj, self.thresholds[c])
            inter = float(np.count_nonzero(seg & gj))
            union = float(np.count_nonzero(seg | gj))
            if union > 0:
                self.iou_full[c] += inter / union
                self.n_full[c] += 1
            if positive and seg.any():
                self.iou_tp[c] += inter / union
                self.n_tp[c] += 1
            norm = normalize_map(mj)
            if positive and norm is not None:
                # pixels above each grid threshold, over the map and over the GT
                above = (norm[None] > grid[:, None, None]).sum(axis=(1, 2))
                in_gt = norm[gj]
                above_gt = (in_gt[None] > grid[:, None]).sum(axis=1)
                n_gt = in_gt.size
                ok = above > 0
                # |seg & gt| = above_gt; |seg | gt| = |gt| + (above - above_gt)
                iou_k = above_gt / (n_gt + above - above_gt)
                self.grid_sum[c, ok] += iou_k[ok]
                self.grid_n[c, ok] += 1

    @staticmethod
    def _mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.maximum(n, 1), np.nan)

    def tuned_thresholds(self) -> dict[str, float]:
        """Per localized class with scored pairs, the grid threshold maximising TP-slice mIoU."""
        out: dict[str, float] = {}
        miou = self._mean(self.grid_sum, self.grid_n)
        for c, name in enumerate(self.names):
            row = miou[c]
            if self.localized[c] and np.isfinite(row).any():
                out[name] = round(TUNE_GRID[int(np.nanargmax(row))], 1)
        return out

    def compute(self) -> dict[str, float]:
        """``hit_rate``, ``miou``, ``miou_full`` (macro over classes) and their ``/<class>``
        values for the localized classes; NaN where nothing was scored."""
        out: dict[str, float] = {}
        per = {
            "hit_rate": self._mean(self.hits, self.n_hit),
            "miou": self._mean(self.iou_tp, self.n_tp),
            "miou_full": self._mean(self.iou_full, self.n_full),
        }
        idx = [c for c, loc in enumerate(self.localized) if loc]
        for key, vals in per.items():
            sel = vals[idx]
            out[key] = float(np.nanmean(sel)) if np.isfinite(sel).any() else math.nan
            for c in idx:
                out[f"{key}/{self.names[c]}"] = float(vals[c])
        return out
