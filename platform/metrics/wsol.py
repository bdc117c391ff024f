"""MaxBoxAccV2 and PxAP exactly as ``clovaai/wsolevaluation`` defines them (Choe et al., CVPR 2020).

Re-implemented from the definitions in wsolevaluation's ``evaluation.py`` / ``inference.py``; the
functions :func:`calculate_multiple_iou`, :func:`resize_bbox` and
:func:`compute_bboxes_from_scoremaps` keep wsolevaluation's names, arguments and results so its
``evaluation_test.py`` vectors apply unchanged (``tests/unit/test_metrics_wsol.py``).

Box convention here: **wsolevaluation's integer** ``(x0, y0, x1, y1)``, scored with the "+1 pixel"
IoU (area ``(x1-x0+1)(y1-y0+1)``). wsolevaluation's predicted boxes are ``boundingRect``'s
``(x, y, x + w, y + h)`` clipped to ``(W-1, H-1)`` - one past the last foreground pixel - and its
GT boxes come from ``(x, y, x + w, y + h)``-style annotations in the same form, so "+1" is applied
to both. Our datasets' boxes are continuous with an exclusive end (``lesionsweep.data.types``);
:func:`boxes_to_wsol_convention` is the one place that converts, into that same form, so a map
that is exactly the GT box's indicator scores IoU 1.

Score-map pipeline (per GT-known map):

1. the raw class map ``[h, w]`` is resized to the evaluation size with ``cv2.resize``
   (``INTER_CUBIC``, float64), then min-max normalised to [0, 1]; a constant map becomes all zeros
   (:func:`prepare_scoremaps`). wsolevaluation silently zeroes NaN maps here; we raise instead.
2. MaxBoxAccV2 (:class:`MaxBoxAccV2Evaluator`): the map is quantised ``uint8(map * 255)``
   (truncation); at each ``tau in arange(0, 1, cam_curve_interval)`` it is binarised like
   ``cv2.threshold(THRESH_BINARY)`` (strict ``>``) at ``int(tau * max)``; every contour
   (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``, holes included) gives its ``boundingRect`` as
   ``(x, y, x + w, y + h)`` clipped to ``(W-1, H-1)``; no contour gives ``[0, 0, 0, 0]``. An image
   is correct at ``(tau, delta)`` if the best IoU over (predicted x GT) boxes is ``>= delta/100``.
   ``maxboxacc@delta = max_tau`` accuracy (a fraction in [0, 1]; wsolevaluation prints percent)
   and ``maxboxacc_v2`` is the mean over ``delta in {30, 50, 70}``. The optimal ``tau`` is chosen
   on the evaluated split (an oracle threshold, by design of the metric). The boxes of all
   thresholds come from one pass over the map (:mod:`.levelsets`, the closed form of those
   contours' boxes), not one contour search per threshold; the slow per-threshold search is kept
   in :mod:`.reference` and the two are tested equal. :meth:`MaxBoxAccV2Evaluator.accumulate`
   scores a whole batch in one compiled call (quantisation, levels, boxes and IoU fused;
   :func:`~lesionsweep.metrics.maxbox_kernel.maxbox_counts`).
3. PxAP (:class:`PxAPEvaluator`): histograms of the normalised scores at GT-positive and
   GT-negative pixels (ignored pixels dropped) over the bins ``[0, b), [b, 2b), ..., [1-b, 1),
   [1, 2), [2, 3]``; precision/recall at each bin edge, ``AP = sum precision[i] * (recall[i] -
   recall[i-1])`` over edges with at least one predicted positive, a fraction in [0, 1]
   (wsolevaluation multiplies by 100). The histograms of a batch come from one compiled pass
   (:func:`~lesionsweep.metrics.histkernels.pxap_histograms_grid`: ``floor(v / b)`` corrected
   by exact comparisons with the edges, i.e. ``searchsorted(edges, v, "right") - 1``,
   vectorised, then counted).

Every metric of lesionsweep is a fraction in [0, 1] (or a count); none is in percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from .common import MetricInputError, as_box_list, check_maps, to_numpy

__all__ = [
    "check_scoremap_validity",
    "check_box_convention",
    "calculate_multiple_iou",
    "resize_bbox",
    "compute_bboxes_from_scoremaps",
    "normalize_scoremap",
    "prepare_scoremaps",
    "boxes_to_wsol_convention",
    "cam_thresholds",
    "MaxBoxAccV2Evaluator",
    "PxAPEvaluator",
]

# cv2.resize takes at most 128 channels per call in OpenCV 5 (CV_CN_MAX was 512 in 4.x)
_CV2_MAX_CHANNELS = 128


def cam_thresholds(cam_curve_interval: float) -> np.ndarray:
    """``np.arange(0, 1, cam_curve_interval)``: the score-map thresholds tau (float64)."""
    if not 0.0 < cam_curve_interval < 1.0:
        raise MetricInputError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval!r}")
    return np.arange(0, 1, cam_curve_interval)


def check_scoremap_validity(scoremap: Any, metric: str = "wsolevaluation") -> None:
    """wsolevaluation's score-map check (float dtypes other than float64 are accepted).

    Raises:
        TypeError: not a numpy array, or not a floating dtype.
        MetricInputError (a ValueError): not 2-D, contains NaN/inf, or outside [0, 1].
    """
    if not isinstance(scoremap, np.ndarray):
        raise TypeError(f"{metric}: scoremap must be a numpy array, got {type(scoremap)}")
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise TypeError(f"{metric}: scoremap must have a float dtype, got {scoremap.dtype}")
    check_maps(scoremap, metric, ndim=2, value_range=(0.0, 1.0))


def check_box_convention(boxes: np.ndarray, convention: str) -> None:
    """Port of wsolevaluation's box check.

    Args:
        boxes: ``[4]`` or ``[N, 4]`` int/float array.
        convention: ``"x0y0x1y1"`` or ``"xywh"``.

    Raises:
        RuntimeError: negative coordinates, wrong shape, or negative width/height.
        ValueError: unknown convention.
    """
    boxes = np.asarray(boxes)
    if (boxes < 0).any():
        raise RuntimeError("Box coordinates must be non-negative.")
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise RuntimeError(f"Box array must have shape (4,) or (num_boxes, 4); got {boxes.shape}")
    if convention == "x0y0x1y1":
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
    elif convention == "xywh":
        widths = boxes[:, 2]
        heights = boxes[:, 3]
    else:
        raise ValueError(f"Unknown box convention {convention!r}; use 'x0y0x1y1' or 'xywh'")
    if (widths < 0).any() or (heights < 0).any():
        raise RuntimeError(f"Boxes do not follow the {convention} convention.")


def calculate_multiple_iou(box_a: Any, box_b: Any) -> np.ndarray:
    """Pairwise IoU with the inclusive "+1 pixel" convention.

    Args:
        box_a: int ``[A, 4]`` boxes ``(x0, y0, x1, y1)``, inclusive ends.
        box_b: int ``[B, 4]`` boxes, same convention.

    Returns:
        float64 ``[A, B]``; a pair whose union is empty gets 0. Two degenerate boxes on the same
        pixel (e.g. both ``[0, 0, 0, 0]``) have IoU 1, since each covers one pixel.

    Raises:
        RuntimeError: if either array breaks the ``x0y0x1y1`` convention.
    """
    a = np.asarray(box_a).reshape(-1, 4)
    b = np.asarray(box_b).reshape(-1, 4)
    check_box_convention(a, "x0y0x1y1")
    check_box_convention(b, "x0y0x1y1")
    a = a[:, None, :].astype(np.float64)
    b = b[None, :, :].astype(np.float64)
    iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    ious = inter / np.where(degenerate, 1.0, union)
    ious[degenerate] = 0.0
    return ious


def resize_bbox(
    box: Iterable[float], image_size: Iterable[float], resize_size: Iterable[float]
) -> tuple[int, int, int, int]:
    """Rescale an ``(x0, y0, x1, y1)`` box from ``image_size`` to ``resize_size``.

    Args:
        box: four numbers ``(x0, y0, x1, y1)``.
        image_size: ``(width, height)`` of the box's image.
        resize_size: ``(width, height)`` to map to.

    Returns:
        The scaled box, each coordinate truncated with ``int()`` (wsolevaluation's rule).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    check_box_convention(np.array([x0, y0, x1, y1]), "x0y0x1y1")
    w, h = (float(v) for v in image_size)
    nw, nh = (float(v) for v in resize_size)
    return int(x0 * nw / w), int(y0 * nh / h), int(x1 * nw / w), int(y1 * nh / h)


def _int_thresholds(scoremap_image: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``int(tau * max)`` per tau (wsolevaluation's ``cv2.threshold`` argument), int64."""
    mx = int(scoremap_image.max()) if scoremap_image.size else 0
    return np.array([int(t * mx) for t in np.asarray(thresholds, dtype=np.float64)], np.int64)


class _Levels:
    """The distinct binary images of a uint8 map over the thresholds.

    ``image > thr`` is the same binary image for every ``thr`` between two pixel values present in
    the map, so the thresholds collapse to ``K`` distinct levels, ascending (``levels[inverse]``
    gives, per tau, a threshold that yields the same binary image as tau's own). ``has[k]`` is
    False where nothing exceeds level ``k``.
    """

    def __init__(self, image: np.ndarray, thresholds: np.ndarray) -> None:
        thr = _int_thresholds(image, thresholds)
        hist = cv2.calcHist([image], [0], None, [256], [0, 256])  # no int64 cast, unlike bincount
        key = np.cumsum(hist.ravel() > 0)[np.minimum(thr, 255)]
        _, first, self.inverse = np.unique(key, return_index=True, return_inverse=True)
        self.levels = thr[first]
        self.has = self.levels < (int(image.max()) if image.size else 0)

    def level_image(self, image: np.ndarray) -> np.ndarray:
        """uint16 ``[H, W]``: the number of levels below each pixel (foreground at ``k`` iff
        ``q > k``), the input of :func:`~lesionsweep.metrics.levelsets.level_boxes`."""
        lut = np.searchsorted(self.levels, np.arange(256), side="left").astype(np.uint16)
        return lut[image]

    def all_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(level index [M], boxes [M, 4])`` of every contour of every level, in one pass."""
        # numba-compiled kernel: imported here so `import lesionsweep.metrics` skips numba
        from .levelsets import level_boxes

        return level_boxes(self.level_image(image), len(self.levels))

    def largest_contour_box(self, image: np.ndarray, k: int) -> np.ndarray:
        """int64 ``[1, 4]``: the box of level ``k``'s largest contour (MaxBoxAcc v1).

        The contour search runs on the foreground's bounding crop: everything outside it is
        background connected to the image border, so the crop has the same contours, found in
        the same raster order (which breaks ties of ``cv2.contourArea`` as wsolevaluation's
        ``max`` does); ``findContours`` pads the crop with background as it pads the image.
        """
        level = int(self.levels[k])  # a Python int keeps the comparison in uint8
        rows = np.flatnonzero(image.max(axis=1) > level)
        cols = np.flatnonzero(image.max(axis=0) > level)
        r0, c0 = int(rows[0]), int(cols[0])
        crop = image[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
        binary = np.greater(crop, level).view(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
        height, width = image.shape
        x, y = x + c0, y + r0
        return np.array([[x, y, min(x + w, width - 1), min(y + h, height - 1)]], np.int64)


def _mine_boxes(
    scoremap_image: np.ndarray, thresholds: np.ndarray, multi_contour_eval: bool
) -> tuple[list[np.ndarray], list[int]]:
    """Boxes per threshold from a uint8 ``[H, W]`` image (see :class:`_Levels`).

    ``cv2.threshold(THRESH_BINARY)`` on uint8 with an integer threshold is exactly ``image > thr``;
    thresholds whose binary images coincide share their boxes.
    """
    lv = _Levels(scoremap_image, thresholds)
    empty = np.zeros((1, 4), dtype=np.int64)
    if multi_contour_eval:
        level_of, boxes = lv.all_boxes(scoremap_image)
        order = np.argsort(level_of, kind="stable")
        split = np.searchsorted(level_of[order], np.arange(1, len(lv.levels)))
        per_level = [b if len(b) else empty for b in np.split(boxes[order], split)]
    else:
        per_level = [
            lv.largest_contour_box(scoremap_image, k) if lv.has[k] else empty
            for k in range(len(lv.levels))
        ]
    out = [per_level[k] for k in lv.inverse]
    return out, [len(b) for b in out]


def compute_bboxes_from_scoremaps(
    scoremap: np.ndarray,
    scoremap_threshold_list: Iterable[float],
    multi_contour_eval: bool = False,
) -> tuple[list[np.ndarray], list[int]]:
    """Mine boxes from a normalised score map at each threshold (wsolevaluation semantics).

    Args:
        scoremap: float ``[H, W]`` in [0, 1].
        scoremap_threshold_list: the thresholds tau in [0, 1).
        multi_contour_eval: all contours (MaxBoxAccV2) or only the largest by
            ``cv2.contourArea`` (MaxBoxAcc v1; wsolevaluation's default).

    Returns:
        ``(boxes, counts)``: per threshold an int64 ``[M, 4]`` array of ``(x, y, x + w, y + h)``
        boxes clipped to ``(W-1, H-1)`` (``[[0, 0, 0, 0]]`` when nothing exceeds the threshold),
        and the number of boxes at each threshold.

    Raises:
        MetricInputError (a ValueError): NaN or values outside [0, 1]; TypeError: not float.
    """
    check_scoremap_validity(scoremap, "compute_bboxes_from_scoremaps")
    image = (scoremap * 255).astype(np.uint8)
    return _mine_boxes(image, np.asarray(list(scoremap_threshold_list)), multi_contour_eval)


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """Min-max normalise one map to [0, 1] (float64); a constant map becomes zeros.

    Raises:
        MetricInputError: if the map has NaN/inf values (wsolevaluation returns zeros instead).
    """
    cam = np.asarray(cam, dtype=np.float64)
    check_maps(cam, "normalize_scoremap", ndim=cam.ndim)
    lo, hi = cam.min(), cam.max()
    if lo == hi:
        return np.zeros_like(cam)
    return (cam - lo) / (hi - lo)


def prepare_scoremaps(
    maps: Any, size: tuple[int, int], metric: str = "wsolevaluation"
) -> np.ndarray:
    """Resize raw maps with bicubic interpolation and min-max normalise each one.

    Args:
        maps: float ``[N, h, w]`` raw class maps (any scale; logits are fine).
        size: the evaluation size ``(H, W)``.
        metric: name used in error messages.

    Returns:
        float64 ``[N, H, W]`` in [0, 1]; constant maps (after resizing) are all zeros.
    """
    arr = to_numpy(maps, np.float64)
    check_maps(arr, metric, ndim=3)
    n = arr.shape[0]
    height, width = int(size[0]), int(size[1])
    if n == 0:
        return np.zeros((0, height, width), dtype=np.float64)
    if arr.shape[1:] == (height, width):
        out = arr.copy()
    else:
        chunks = []
        for s in range(0, n, _CV2_MAX_CHANNELS):
            part = np.ascontiguousarray(arr[s : s + _CV2_MAX_CHANNELS].transpose(1, 2, 0))
            r = cv2.resize(part, (width, height), interpolation=cv2.INTER_CUBIC)
            chunks.append(r.reshape(height, width, -1).transpose(2, 0, 1))
        out = np.ascontiguousarray(np.concatenate(chunks, axis=0))  # [N, H, W] C order
    lo = out.min(axis=(1, 2), keepdims=True)
    hi = out.max(axis=(1, 2), keepdims=True)
    rng = hi - lo
    const = rng == 0
    out = np.where(const, 0.0, (out - lo) / np.where(const, 1.0, rng))
    return np.ascontiguousarray(out)


def boxes_to_wsol_convention(boxes: Any, width: int, height: int) -> np.ndarray:
    """Convert our continuous exclusive-end boxes to wsolevaluation's integer boxes.

    Our box ``(x0, y0, x1, y1)`` covers ``[x0, x1) x [y0, y1)`` where pixel ``(row i, col j)`` is
    ``[j, j+1) x [i, i+1)``. The pixels it overlaps with positive area are columns
    ``floor(x0) .. ceil(x1) - 1``; wsolevaluation writes such a pixel set the way its box mining
    does (``boundingRect`` -> ``(x, y, x + w, y + h)``, clipped to ``(W-1, H-1)``), i.e.
    ``(floor(x0), floor(y0), min(ceil(x1), W-1), min(ceil(y1), H-1))``. So a box covering exactly
    pixel columns ``a..b`` (``x0 = a, x1 = b + 1``) gives ``x0 = a, x1 = b + 1`` (clipped), the
    same box wsolevaluation mines from a map that is 1 exactly on those pixels, and its "+1" IoU
    is then 1. (Reading the box as inclusive ``a..b`` instead would cap a perfect ``w x h`` map at
    IoU ``w h / ((w+1)(h+1))``.) Coordinates are rounded with a 1e-6 pixel tolerance against
    float noise and clipped to ``0..W-1`` / ``0..H-1``; ``x1 >= x0`` and ``y1 >= y0`` always.

    Args:
        boxes: float ``[G, 4]`` continuous ``(x0, y0, x1, y1)`` in the evaluated image's pixels.
        width: image width W. height: image height H.

    Returns:
        int64 ``[G, 4]`` boxes for :func:`calculate_multiple_iou`.
    """
    b = to_numpy(boxes, np.float64).reshape(-1, 4)
    eps = 1e-6
    x0 = np.clip(np.floor(b[:, 0] + eps), 0, width - 1)
    y0 = np.clip(np.floor(b[:, 1] + eps), 0, height - 1)
    x1 = np.clip(np.ceil(b[:, 2] - eps), 0, width - 1)
    y1 = np.clip(np.ceil(b[:, 3] - eps), 0, height - 1)
    x1 = np.maximum(x1, x0)
    y1 = np.maximum(y1, y0)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


class MaxBoxAccV2Evaluator:
    """MaxBoxAccV2 over GT-known maps (wsolevaluation ``BoxEvaluator``, ``box_v2_metric``).

    Args:
        cam_curve_interval: step of the thresholds ``arange(0, 1, step)``.
        iou_thresholds: the IoU levels delta in percent (they name the keys ``maxboxacc@<delta>``).
        multi_contour_eval: all contours (V2, default) or the largest only (V1).
    """

    def __init__(
        self,
        cam_curve_interval: float = 0.01,
        iou_thresholds: Sequence[int] = (30, 50, 70),
        multi_contour_eval: bool = True,
    ) -> None:
        self.thresholds = cam_thresholds(cam_curve_interval)
        self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
        self.multi_contour_eval = bool(multi_contour_eval)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.num_correct = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)

    def accumulate(self, scoremaps: Any, gt_boxes: Sequence[Any]) -> None:
        """Add maps and their GT boxes.

        Args:
            scoremaps: float ``[N, H, W]`` in [0, 1] (e.g. from :func:`prepare_scoremaps`).
            gt_boxes: N arrays int ``[G_i, 4]`` (G_i >= 1) of wsolevaluation integer boxes in the
                maps' pixels (see :func:`boxes_to_wsol_convention`).
        """
        maps = to_numpy(scoremaps)
        if maps.ndim != 3 or maps.dtype != np.float64:
            check_maps(maps, "MaxBoxAccV2", ndim=3, value_range=(0.0, 1.0))
        gts = as_box_list(gt_boxes, "MaxBoxAccV2", maps.shape[0])
        if any(g.shape[0] == 0 for g in gts):
            raise MetricInputError("MaxBoxAccV2: every map needs at least one GT box")
        if maps.shape[0] == 0:
            return
        deltas = np.asarray(self.iou_thresholds, dtype=np.float64) / 100.0
        gt = np.concatenate(gts).astype(np.int64)
        check_box_convention(gt, "x0y0x1y1")  # what calculate_multiple_iou raises
        if self.multi_contour_eval:
            # numba-compiled kernel: imported here so `import lesionsweep.metrics` skips numba
            from .maxbox_kernel import maxbox_counts

            off = np.concatenate(([0], np.cumsum([g.shape[0] for g in gts]))).astype(np.int64)
            none = np.zeros((0, 1, 1))
            if maps.dtype == np.float64:  # quantised in the kernel, fused with the range check
                maps64, images = np.ascontiguousarray(maps), none.astype(np.uint8)
            else:  # numpy's uint8(map * 255) in the maps' own precision
                maps64, images = none, np.ascontiguousarray((maps * 255).astype(np.uint8))
            if not maxbox_counts(
                maps64, images, gt, off, self.thresholds, deltas, self.num_correct
            ):
                check_maps(maps, "MaxBoxAccV2", ndim=3, value_range=(0.0, 1.0))  # raises
            self.count += maps.shape[0]
            return
        check_maps(maps, "MaxBoxAccV2", ndim=3, value_range=(0.0, 1.0))
        images = (maps * 255).astype(np.uint8)
        for image, g in zip(images, gts, strict=True):
            best = self._best_ious(image, g.astype(np.int64))  # [n_tau]
            self.num_correct += best[None, :] >= deltas[:, None]
            self.count += 1

    def _best_ious(self, image: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Best IoU over (mined x GT) boxes per tau, float64 ``[n_tau]``."""
        lv = _Levels(image, self.thresholds)
        best = np.full(len(lv.levels), -1.0)
        if not lv.has.all():  # no foreground: wsolevaluation's box [0, 0, 0, 0]
            best[~lv.has] = calculate_multiple_iou(np.zeros((1, 4), np.int64), gt).max()
        if self.multi_contour_eval:
            level_of, boxes = lv.all_boxes(image)
        else:
            level_of = np.flatnonzero(lv.has)
            boxes = np.concatenate(
                [lv.largest_contour_box(image, int(k)) for k in level_of] or [np.zeros((0, 4))]
            ).astype(np.int64)
        if len(boxes):
            np.maximum.at(best, level_of, calculate_multiple_iou(boxes, gt).max(axis=1))
        return best[lv.inverse]

    def accuracy_curves(self) -> np.ndarray:
        """Box accuracy in [0, 1], float64 ``[len(iou_thresholds), len(thresholds)]``."""
        if self.count == 0:
            return np.full(self.num_correct.shape, math.nan)
        return self.num_correct / self.count

    def compute(self) -> dict[str, float]:
        """``maxboxacc@<delta>`` in [0, 1] and ``maxboxacc_v2`` (their mean); NaN when empty."""
        curves = self.accuracy_curves()
        out: dict[str, float] = {}
        best = []
        for d, curve in zip(self.iou_thresholds, curves, strict=True):
            v = float(curve.max()) if self.count else math.nan
            out[f"maxboxacc@{d}"] = v
            best.append(v)
        out["maxboxacc_v2"] = float(np.mean(best)) if self.count else math.nan
        return out


class PxAPEvaluator:
    """Pixel average precision (wsolevaluation ``MaskEvaluator``), a fraction in [0, 1].

    Args:
        cam_curve_interval: bin width of the score histograms.
    """

    def __init__(self, cam_curve_interval: float = 0.01) -> None:
        self.step = float(cam_curve_interval)
        self.thresholds = cam_thresholds(cam_curve_interval)
        # bins [0, b), ..., [1-b, 1), [1, 2), [2, 3]
        self.bin_edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        # the grid kernel recomputes edge k as k * step: only if that is what arange gave
        n = len(self.thresholds)
        self._grid = n < 2**29 and bool(np.array_equal(self.thresholds, np.arange(n) * self.step))
        self.reset()

    def reset(self) -> None:
        n = len(self.bin_edges) - 1
        self.gt_true_hist = np.zeros(n, dtype=np.float64)
        self.gt_false_hist = np.zeros(n, dtype=np.float64)

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """Histogram bin of each value in [0, 1]: ``searchsorted(bin_edges, v, "right") - 1``.

        ``floor(v / step)`` is that bin except next to an edge (``arange``'s edges are ``k * step``
        rounded once) and at ``v = 1``; the values within 1e-6 of a bin's end (far above float
        error) and the ones get the exact ``searchsorted``. int32 keeps the casts vectorised.

        Args:
            values: float array of any shape, values in [0, 1].

        Returns:
            int32 array of the same shape, in ``0 .. len(bin_edges) - 2``.
        """
        scaled = values * (1.0 / self.step)
        idx = scaled.astype(np.int32)
        frac = scaled - idx
        near = (frac < 1e-6) | (frac > 1.0 - 1e-6) | (values >= 1.0)
        fix = np.flatnonzero(near)
        if fix.size:
            exact = np.searchsorted(self.bin_edges, values.reshape(-1)[fix], side="right") - 1
            idx.reshape(-1)[fix] = exact
        return idx

    def accumulate(self, scoremaps: Any, gt_masks: Any, ignore_masks: Any | None = None) -> None:
        """Add maps with their GT masks: one compiled pass over the batch's pixels.

        Args:
            scoremaps: float ``[N, H, W]`` in [0, 1].
            gt_masks: bool ``[N, H, W]`` (True = foreground).
            ignore_masks: optional bool ``[N, H, W]``; True pixels are left out.
        """
        maps = to_numpy(scoremaps)
        if maps.ndim != 3 or maps.dtype != np.float64:
            check_maps(maps, "PxAP", ndim=3, value_range=(0.0, 1.0))
        gt = to_numpy(gt_masks).astype(bool, copy=False)
        if gt.shape != maps.shape:
            raise MetricInputError(f"PxAP: masks {gt.shape} do not match maps {maps.shape}")
        ignore = np.zeros(0, np.uint8)
        if ignore_masks is not None:
            ign = to_numpy(ignore_masks).astype(bool, copy=False)
            if ign.shape != maps.shape:
                raise MetricInputError(f"PxAP: ignore masks {ign.shape} != maps {maps.shape}")
            ignore = np.ascontiguousarray(ign).reshape(-1).view(np.uint8)
        # numba-compiled kernel: imported here so `import lesionsweep.metrics` skips numba
        from .histkernels import pxap_histograms, pxap_histograms_grid

        flat = np.ascontiguousarray(maps, dtype=np.float64).reshape(-1)
        flat_gt = np.ascontiguousarray(gt).reshape(-1).view(np.uint8)
        hists = (self.gt_false_hist, self.gt_true_hist)
        if self._grid:
            n = len(self.thresholds)
            bad = pxap_histograms_grid(flat, flat_gt, ignore, self.step, 1.0 / self.step, n, *hists)
        else:
            bad = pxap_histograms(flat, flat_gt, ignore, self.bin_edges, 1.0 / self.step, *hists)
        if bad:  # NaN/inf or out of range: the check names what is wrong
            check_maps(maps, "PxAP", ndim=3, value_range=(0.0, 1.0))

    def compute(self) -> dict[str, float]:
        """``pxap`` in [0, 1]; NaN if no GT-positive pixel (wsolevaluation raises there)."""
        n_true = self.gt_true_hist.sum()
        tp = self.gt_true_hist[::-1].cumsum()
        fp = self.gt_false_hist[::-1].cumsum()
        if n_true <= 0:
            return {"pxap": math.nan}
        nonzero = (tp + fp) != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
        recall = tp / n_true
        ap = (precision[1:] * np.diff(recall))[nonzero[1:]].sum()
        return {"pxap": float(ap)}
