"""The one evaluator the trainer calls: every metric a dataset supports, from one batch stream.

The trainer never branches on the dataset or the metric: it calls
``suite.accumulate(logits, maps, batch, map_kind)`` per batch and ``suite.compute()`` at the end
of the split. Which metrics run follows from :class:`~lesionsweep.data.types.DatasetInfo`
(``has_boxes``, ``has_masks``); the key set of ``compute()`` depends only on ``info``, never on
the data seen (a metric with nothing to score reports NaN).

Which maps and which transform each metric sees (GT-known maps, as Wang et al. and
wsolevaluation evaluate: the map of every (image, class) pair that has GT localization):

* AUROC: all known labels; image logits.
* NIH T(IoBB)/T(IoU) and AFP: pairs with >= 1 box; raw map, bilinear to the image size, min-max
  to [0, 255].
* Point accuracy (PYLON): pairs with >= 1 box; probabilities, bilinear to the image size, argmax
  (``point_map="probability"``, PYLON's order: sigmoid first, then upsample; computed in float64
  without saturation by :func:`~lesionsweep.metrics.point.upsampled_argmax`). ``point_map="raw"``
  takes the argmax of the upsampled raw map instead (not PYLON's definition: bilinear upsampling
  and the sigmoid do not commute, so the point can move).
* MaxBoxAccV2: pairs with >= 1 box; raw map, cv2 bicubic to the image size, min-max to [0, 1].
* PxAP: pairs with a non-empty mask; raw map, cv2 bicubic to the image size, min-max to [0, 1].
* Dice (pooled and per image): every pair with a known label (negatives have empty masks);
  probabilities, bilinear to the image size, ``> mask_threshold``. ``dice_per_image`` averages
  lesion-positive pairs only; ``dice_per_image_with_empty`` every pair (:mod:`.dice`).
* CheXlocalize hit rate and mIoU (:mod:`.chexlocalize`): with masks, every (image, class) pair
  of a class with localization ground truth (``info.loc_classes``); raw map, bilinear to the
  image size; image probabilities for the optional cut-offs.
* Shortcut metrics (:mod:`.shortcut`): with ``info.confounder_class``, the images carrying the
  confounder (``batch.confounder``); that class's raw map, bilinear to the image size.

"Raw map" is the method's map as returned (the class activation for CAM-like methods, as
wsolevaluation and Wang feed it); the per-map min-max normalisation of those metrics makes them
independent of the map's scale. "Probabilities" are ``sigmoid(maps)`` for ``map_kind="logits"``
and the maps themselves for ``"probabilities"`` / ``"normalized"`` (which must lie in [0, 1]).
Bilinear upsampling uses ``align_corners=False``, batched in torch on the maps' device; the
results are moved to CPU numpy once per batch and all scoring is numpy/OpenCV.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.types import Batch, DatasetInfo
from .auroc import AurocEvaluator
from .chexlocalize import ChexlocalizeEvaluator
from .common import MetricInputError
from .dice import DiceEvaluator
from .nih import NihBoxEvaluator
from .point import POINT_MAPS, PointAccuracyEvaluator
from .shortcut import ShortcutEvaluator, default_radius
from .wsol import MaxBoxAccV2Evaluator, PxAPEvaluator, boxes_to_wsol_convention, prepare_scoremaps

__all__ = ["MAP_KINDS", "LocalizationSuite"]

MAP_KINDS: tuple[str, ...] = ("logits", "probabilities", "normalized")


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) ``[P, h, w] -> [P, H, W]`` float32."""
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class LocalizationSuite:
    """Classification and localization metrics for one split.

    Args:
        info: the dataset's description (class names, which localization labels exist).
        image_size: side of the (square) images in the batches; boxes and masks live in it.
        cam_curve_interval: threshold step for MaxBoxAccV2 and PxAP (wsolevaluation).
        mask_threshold: probability threshold (strict ``>``) for Dice.
        loc_thresholds, prob_cutoffs: CheXlocalize's optional per-class binarisation thresholds
            and probability cut-offs (:class:`~lesionsweep.metrics.chexlocalize.
            ChexlocalizeEvaluator`; default Otsu, no cut-off).
        shortcut_radius: tolerance around the confounder tube, pixels (default
            ``max(1, image_size // 64)``).
        point_map: the map point accuracy takes its argmax on, one of
            :data:`~lesionsweep.metrics.point.POINT_MAPS`: ``"probability"`` (PYLON; default) or
            ``"raw"`` (the upsampled raw map).

    Attributes:
        localize: when False, :meth:`accumulate` feeds only the AUROC (the trainer's
            ``eval.loc_every``); the localization keys of :meth:`compute` are then NaN (counts 0).
    """

    def __init__(
        self,
        info: DatasetInfo,
        image_size: int,
        cam_curve_interval: float = 0.01,
        mask_threshold: float = 0.5,
        loc_thresholds: dict[str, float] | None = None,
        prob_cutoffs: dict[str, float] | None = None,
        shortcut_radius: int | None = None,
        point_map: str = "probability",
    ) -> None:
        if point_map not in POINT_MAPS:
            raise MetricInputError(
                f"LocalizationSuite: point_map must be one of {POINT_MAPS}, got {point_map!r}"
            )
        self.point_map = point_map
        self.info = info
        self.image_size = int(image_size)
        self.localize = True
        if self.image_size < 1:
            raise MetricInputError(f"LocalizationSuite: image_size must be >= 1, got {image_size}")
        names = info.classes
        self.auroc = AurocEvaluator(names)
        self.nih = NihBoxEvaluator(names) if info.has_boxes else None
        self.point = PointAccuracyEvaluator(names) if info.has_boxes else None
        self.maxbox = MaxBoxAccV2Evaluator(cam_curve_interval) if info.has_boxes else None
        self.pxap = PxAPEvaluator(cam_curve_interval) if info.has_masks else None
        self.dice = DiceEvaluator(mask_threshold) if info.has_masks else None
        self.chexloc = None
        if info.has_masks and any(info.localized):
            self.chexloc = ChexlocalizeEvaluator(
                names, info.localized, loc_thresholds, prob_cutoffs
            )
        self.shortcut = None
        if info.has_masks and info.confounder_class in names:
            r = default_radius(self.image_size) if shortcut_radius is None else shortcut_radius
            self.shortcut = ShortcutEvaluator(r)

    def reset(self) -> None:
        """Forget everything accumulated (start of a new split/epoch)."""
        for ev in (self.auroc, self.nih, self.point, self.maxbox, self.pxap, self.dice):
            if ev is not None:
                ev.reset()
        for extra in (self.chexloc, self.shortcut):
            if extra is not None:
                extra.reset()

    # ------------------------------------------------------------------ checks
    def _check(self, logits: torch.Tensor, maps: torch.Tensor, batch: Batch, map_kind: str) -> None:
        k = self.info.num_classes
        b = len(batch)
        if map_kind not in MAP_KINDS:
            raise MetricInputError(
                f"LocalizationSuite: map_kind must be one of {MAP_KINDS}, got {map_kind!r}"
            )
        if logits.ndim != 2 or tuple(logits.shape) != (b, k):
            raise MetricInputError(
                f"LocalizationSuite: logits must be [B={b}, K={k}], got {tuple(logits.shape)}"
            )
        if maps.ndim != 4 or tuple(maps.shape[:2]) != (b, k):
            raise MetricInputError(
                f"LocalizationSuite: maps must be [B={b}, K={k}, h, w], got {tuple(maps.shape)}"
            )
        h, w = batch.images.shape[-2:]
        if (int(h), int(w)) != (self.image_size, self.image_size):
            raise MetricInputError(
                f"LocalizationSuite: batch images are {int(h)}x{int(w)}, the suite was built for "
                f"image_size={self.image_size}"
            )
        if not bool(torch.isfinite(logits).all()):
            raise MetricInputError("LocalizationSuite (AUROC): logits contain NaN or inf")
        if not bool(torch.isfinite(maps).all()):
            raise MetricInputError(
                "LocalizationSuite (localization metrics): maps contain NaN or inf"
            )
        if map_kind != "logits" and maps.numel():
            lo, hi = float(maps.min()), float(maps.max())
            if lo < 0.0 or hi > 1.0:
                raise MetricInputError(
                    f"LocalizationSuite: maps with map_kind={map_kind!r} must lie in [0, 1]; "
                    f"got min={lo:.6g}, max={hi:.6g}"
                )
        if self.info.has_masks and batch.masks is None:
            raise MetricInputError(
                f"LocalizationSuite: dataset {self.info.name!r} has masks but the batch has none "
                "(every item needs a [K, H, W] mask; empty for negatives)"
            )

    def _box_pairs(self, batch: Batch) -> tuple[list[int], list[int], list[np.ndarray]]:
        k = self.info.num_classes
        bi: list[int] = []
        ci: list[int] = []
        gts: list[np.ndarray] = []
        for i, boxes in enumerate(batch.boxes):
            arr = boxes.detach().cpu().numpy().astype(np.float64).reshape(-1, 5)
            if arr.shape[0] == 0:
                continue
            cls = arr[:, 0]
            if not np.all((cls == np.round(cls)) & (cls >= 0) & (cls < k)):
                raise MetricInputError(
                    f"LocalizationSuite: item {i} ({batch.ids[i] if batch.ids else i}) has box "
                    f"class indices {np.unique(cls).tolist()}; allowed are integers 0..{k - 1}"
                )
            for c in np.unique(cls).astype(np.int64):
                bi.append(i)
                ci.append(int(c))
                gts.append(arr[cls == c, 1:5])
        return bi, ci, gts

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def accumulate(
        self, logits: torch.Tensor, maps: torch.Tensor, batch: Batch, map_kind: str
    ) -> None:
        """Add one batch.

        Args:
            logits: float ``[B, K]`` image-level logits.
            maps: float ``[B, K, h, w]`` class maps (any device / float dtype).
            batch: the batch the outputs belong to (targets, target_mask, boxes, masks).
            map_kind: ``"logits"``, ``"probabilities"`` or ``"normalized"``.
        """
        self._check(logits, maps, batch, map_kind)
        size = (self.image_size, self.image_size)
        self.auroc.accumulate(logits, batch.targets, batch.target_mask)
        if not self.localize:
            return

        dev = maps.device
        raw = maps.float()
        prob = torch.sigmoid(raw) if map_kind == "logits" else raw

        bi, ci, gts = self._box_pairs(batch) if self.info.has_boxes else ([], [], [])
        dice_b = dice_c = pxap_b = pxap_c = np.zeros(0, np.int64)
        masks_np = None
        if self.info.has_masks:
            assert batch.masks is not None
            masks_np = batch.masks.detach().cpu().numpy().astype(bool)
            known = batch.target_mask.detach().cpu().numpy() > 0.5
            dice_b, dice_c = np.nonzero(known)
            pxap_b, pxap_c = np.nonzero(masks_np.any(axis=(2, 3)))

        def idx(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.int64), device=dev)

        tb, tc = idx(bi), idx(ci)
        # device work: select GT-known maps, upsample, then one move to CPU per resolution
        up = (
            torch.cat(
                [
                    _upsample(raw[tb, tc], size),  # NIH
                    _upsample(prob[idx(dice_b), idx(dice_c)], size).clamp(0.0, 1.0),  # Dice
                ]
            )
            .cpu()
            .numpy()
        )
        low = torch.cat([raw[tb, tc], raw[idx(pxap_b), idx(pxap_c)]]).cpu().numpy()
        n_box, n_dice = len(bi), len(dice_b)

        if self.info.has_boxes and n_box:
            assert self.nih is not None and self.point is not None and self.maxbox is not None
            self.nih.accumulate(up[:n_box], ci, gts)
            # point accuracy upsamples itself, in float64 (sigmoid first for logit maps)
            point_map = "raw" if map_kind != "logits" else self.point_map
            self.point.accumulate_maps(low[:n_box], size, ci, gts, point_map)
            scoremaps = prepare_scoremaps(low[:n_box], size, "MaxBoxAccV2")
            wsol_gts = [boxes_to_wsol_convention(g, size[1], size[0]) for g in gts]
            self.maxbox.accumulate(scoremaps, wsol_gts)
        if self.info.has_masks and masks_np is not None:
            assert self.dice is not None and self.pxap is not None
            if n_dice:
                self.dice.accumulate(up[n_box : n_box + n_dice], masks_np[dice_b, dice_c])
            if len(pxap_b):
                scoremaps = prepare_scoremaps(low[n_box:], size, "PxAP")
                self.pxap.accumulate(scoremaps, masks_np[pxap_b, pxap_c])
            self._accumulate_extra(logits, raw, batch, masks_np)

    def _accumulate_extra(
        self, logits: torch.Tensor, raw: torch.Tensor, batch: Batch, masks_np: np.ndarray
    ) -> None:
        """CheXlocalize hit rate / mIoU and the shortcut metrics (raw maps, bilinear)."""
        size = (self.image_size, self.image_size)
        dev = raw.device
        if self.chexloc is not None:
            loc = np.flatnonzero(np.asarray(self.info.localized))
            b = len(batch)
            bi = np.repeat(np.arange(b), len(loc))
            ci = np.tile(loc, b)
            tb = torch.as_tensor(bi, device=dev)
            tc = torch.as_tensor(ci, device=dev)
            up = _upsample(raw[tb, tc], size).cpu().numpy()
            prob = torch.sigmoid(logits.float()[tb, tc]).cpu().numpy()
            self.chexloc.accumulate(up, ci, masks_np[bi, ci], prob)
        if self.shortcut is not None:
            if batch.confounder is None:
                raise MetricInputError(
                    f"LocalizationSuite: dataset {self.info.name!r} has a confounder class but "
                    "the batch carries no confounder masks"
                )
            c = self.info.classes.index(str(self.info.confounder_class))
            tubes = batch.confounder.detach().cpu().numpy().astype(bool)
            sel = np.flatnonzero(tubes.any(axis=(1, 2)))
            if len(sel):
                ts = torch.as_tensor(sel, device=dev)
                up = _upsample(raw[ts, c], size).cpu().numpy()
                self.shortcut.accumulate(up, tubes[sel], masks_np[sel, c])

    def tuned_thresholds(self) -> dict[str, float]:
        """CheXlocalize's per-class thresholds tuned on the accumulated split (empty without
        masks); pass them as ``loc_thresholds`` to a suite for the test split."""
        return {} if self.chexloc is None else self.chexloc.tuned_thresholds()

    def compute(self) -> dict[str, float]:
        """All metrics as one flat ``{name: float}`` dict (see the module docstring).

        Always ``auroc_macro``, ``auroc_micro``, ``auroc_num_classes``, ``auroc/<class>``. With
        boxes: ``point_acc_*``, ``point_acc/<class>``, ``iobb@T``, ``iobb@T/<class>``, ``iou@T``,
        ``iou@T/<class>``, ``afp`` (+ per-threshold and per-level variants, see
        :class:`~lesionsweep.metrics.nih.NihBoxEvaluator`), ``maxboxacc_v2``,
        ``maxboxacc@30/50/70``. With masks: ``pxap``, ``dice_pooled``,
        ``dice_per_image``, ``dice_per_image_with_empty``, and for classes with localization
        ground truth ``hit_rate``, ``miou``, ``miou_full`` (+ ``/<class>``). With a confounder
        class: ``shortcut_pointing``, ``shortcut_energy``, ``shortcut_area``. Values are NaN
        where nothing could be scored.
        Every value is a fraction in [0, 1] (``afp`` and ``*_num_*`` are counts).
        """
        out = self.auroc.compute()
        for ev in (
            self.point,
            self.nih,
            self.maxbox,
            self.pxap,
            self.dice,
            self.chexloc,
            self.shortcut,
        ):
            if ev is not None:
                out.update(ev.compute())
        return {k: (float(v) if v is not None else math.nan) for k, v in out.items()}
