"""Metrics: pure functions and ``accumulate(...)`` / ``compute() -> dict[str, float]`` evaluators.

* :class:`LocalizationSuite` - the one object the trainer uses (every metric a dataset supports).
* AUROC (:mod:`.auroc`), NIH T(IoBB)/T(IoU) box accuracy and AFP (:mod:`.nih`), PYLON point
  accuracy (:mod:`.point`), wsolevaluation MaxBoxAccV2 / PxAP (:mod:`.wsol`), Dice (:mod:`.dice`).

Box conventions are stated per module; our datasets' boxes are continuous ``(x0, y0, x1, y1)``
with exclusive ends (``lesionsweep.data.types``), converted to wsolevaluation's inclusive integer
boxes only by :func:`boxes_to_wsol_convention`.
"""

from __future__ import annotations

from .auroc import AurocEvaluator, auroc_micro, auroc_per_class
from .bootstrap import BootstrapCI, RunOutputs, bootstrap_suite
from .common import MetricInputError
from .dice import DiceEvaluator, binary_f1_pooled, confusion_counts, dice_per_image
from .nih import (
    IOBB_THRESHOLDS,
    IOU_THRESHOLDS,
    NIH_LEVELS,
    NihBoxEvaluator,
    box_iou_iobb,
    nih_boxes_from_heatmap,
)
from .point import PointAccuracyEvaluator, argmax_points, points_in_boxes, random_point_chance
from .suite import MAP_KINDS, LocalizationSuite
from .wsol import (
    MaxBoxAccV2Evaluator,
    PxAPEvaluator,
    boxes_to_wsol_convention,
    calculate_multiple_iou,
    cam_thresholds,
    compute_bboxes_from_scoremaps,
    normalize_scoremap,
    prepare_scoremaps,
    resize_bbox,
)

__all__ = [
    "BootstrapCI",
    "RunOutputs",
    "bootstrap_suite",
    "LocalizationSuite",
    "MAP_KINDS",
    "MetricInputError",
    "AurocEvaluator",
    "auroc_per_class",
    "auroc_micro",
    "NihBoxEvaluator",
    "nih_boxes_from_heatmap",
    "box_iou_iobb",
    "IOBB_THRESHOLDS",
    "IOU_THRESHOLDS",
    "NIH_LEVELS",
    "PointAccuracyEvaluator",
    "argmax_points",
    "points_in_boxes",
    "random_point_chance",
    "MaxBoxAccV2Evaluator",
    "PxAPEvaluator",
    "calculate_multiple_iou",
    "resize_bbox",
    "compute_bboxes_from_scoremaps",
    "normalize_scoremap",
    "prepare_scoremaps",
    "boxes_to_wsol_convention",
    "cam_thresholds",
    "DiceEvaluator",
    "dice_per_image",
    "binary_f1_pooled",
    "confusion_counts",
]
