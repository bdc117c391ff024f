"""TensorBoard logging: every metric as a scalar, and map overlays of fixed validation images.

An overlay strip for one image is ``[image + GT boxes | overlay class a | overlay class b ...]``
(panels side by side, RGB ``uint8`` ``[H, W_total, 3]``):

* the grayscale image is shown as gray; ground-truth boxes (continuous pixel coordinates
  ``x0, y0, x1, y1``, ``x1``/``y1`` exclusive) are drawn in green on every panel;
* each further panel blends the JET-coloured map of one class (bilinearly resized to the image,
  min-max normalised per map, so a constant map is all blue) over the image, alpha 0.5, and is
  labelled with the class name and the predicted probability;
* the classes shown are the image's positive classes (label 1 or a GT box); an image with none
  shows its top-scoring class, labelled ``pred:<name>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["OverlayItem", "render_overlay", "render_strip", "TensorBoardLogger"]

_BOX_RGB = (0, 255, 0)


@dataclass
class OverlayItem:
    """What is needed to draw one validation image's maps.

    Attributes:
        image: ``uint8`` ``[H, W]`` grayscale image.
        maps: ``float32`` ``[K, h, w]`` localization maps (any scale).
        probs: ``float32`` ``[K]`` predicted probabilities.
        target: ``float32`` ``[K]`` 0/1 labels.
        boxes: ``float32`` ``[N, 5]`` rows ``(class, x0, y0, x1, y1)``.
        id: the image id.
    """

    image: np.ndarray
    maps: np.ndarray
    probs: np.ndarray
    target: np.ndarray
    boxes: np.ndarray
    id: str


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def _draw_boxes(rgb: np.ndarray, boxes: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    t = max(1, round(min(h, w) / 128))
    for b in boxes:
        x0, y0 = int(math.floor(b[1])), int(math.floor(b[2]))
        x1, y1 = int(math.ceil(b[3])) - 1, int(math.ceil(b[4])) - 1
        x0, x1 = max(0, min(x0, w - 1)), max(0, min(x1, w - 1))
        y0, y1 = max(0, min(y0, h - 1)), max(0, min(y1, h - 1))
        cv2.rectangle(rgb, (x0, y0), (x1, y1), _BOX_RGB, t)


def _label(rgb: np.ndarray, text: str) -> None:
    h = rgb.shape[0]
    scale = max(0.25, h / 512)
    thick = max(1, round(h / 256))
    org = (2, max(8, int(14 * scale * 1.5)))
    cv2.putText(rgb, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 1, cv2.LINE_AA)
    cv2.putText(
        rgb, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
    )


def render_overlay(
    image: np.ndarray, heat: np.ndarray | None, boxes: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """One panel: ``image`` (``uint8`` ``[H, W]``) with ``heat`` (``[h, w]``, any scale) as a JET
    overlay (skipped when ``None``) and ``boxes`` (``[N, 4+]``, the last four columns
    ``x0, y0, x1, y1``) drawn. Returns ``uint8`` ``[H, W, 3]`` RGB."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    if heat is not None:
        hm = cv2.resize(_normalise(heat), (w, h), interpolation=cv2.INTER_LINEAR)
        color = cv2.applyColorMap(np.clip(hm * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        color = color[:, :, ::-1].astype(np.float32)  # BGR -> RGB
        rgb = ((1.0 - alpha) * rgb.astype(np.float32) + alpha * color).round().astype(np.uint8)
    rgb = np.ascontiguousarray(rgb)
    if len(boxes):
        _draw_boxes(rgb, np.asarray(boxes, dtype=np.float32)[:, -5:])
    return rgb


def render_strip(item: OverlayItem, class_names: Sequence[str]) -> np.ndarray:
    """The overlay strip of one image (see the module docstring); ``uint8`` ``[H, W', 3]``."""
    boxes = np.asarray(item.boxes, dtype=np.float32).reshape(-1, 5)
    pos = set(np.flatnonzero(np.asarray(item.target) > 0.5).tolist())
    pos |= {int(c) for c in boxes[:, 0]}
    classes = sorted(c for c in pos if 0 <= c < item.maps.shape[0])
    labels = [class_names[c] for c in classes]
    if not classes:
        top = int(np.argmax(item.probs))
        classes, labels = [top], [f"pred:{class_names[top]}"]
    panels = [render_overlay(item.image, None, boxes)]
    for c, name in zip(classes, labels, strict=True):
        p = render_overlay(item.image, item.maps[c], boxes[boxes[:, 0] == c])
        _label(p, f"{name} p={float(item.probs[c]):.2f}")
        panels.append(p)
    sep = np.full((item.image.shape[0], 2, 3), 255, dtype=np.uint8)
    out: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            out.append(sep)
        out.append(p)
    return np.concatenate(out, axis=1)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:60]


class TensorBoardLogger:
    """Thin wrapper over ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the event folder.
        purge_step: on resume, the first epoch that is re-run; events at or after it left by an
            interrupted run are hidden by TensorBoard.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per metric (tags are the metric keys, e.g. ``val/auroc_macro``)."""
        for k, v in metrics.items():
            if k == "epoch":
                continue
            self.writer.add_scalar(k, float(v), global_step=step)

    def log_overlays(
        self, items: Sequence[OverlayItem], class_names: Sequence[str], step: int
    ) -> None:
        """One image per item under ``maps/<slot>_<id>``: its overlay strip."""
        for slot, item in enumerate(items):
            strip = render_strip(item, class_names)
            self.writer.add_image(
                f"maps/{slot:02d}_{_safe(item.id)}", strip, global_step=step, dataformats="HWC"
            )

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
