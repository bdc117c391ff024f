"""Shortcut metrics: does the confounder class's map point at the lesion or at the tube?

The phantom can draw a radio-opaque tube (chest drain / NG tube) that co-occurs with one class
(``DatasetInfo.confounder_class``); a classifier may then learn the tube instead of the lesion.
Scored on the images of the split that carry a tube, with the confounder class's map (the raw
map, bilinearly upsampled to the image, as for point accuracy):

* ``shortcut_pointing``: share of those images whose map peak (first ``np.argmax``) falls in the
  tube region and not on a lesion of that class.
* ``shortcut_energy``: mean share of the map's mass in the tube region outside the lesion, the
  map min-max normalised to ``[0, 1]`` per image (a constant map counts as uniform).
* ``shortcut_area``: mean share of the image the tube region (outside the lesion) covers: what a
  uniform map scores on ``shortcut_energy`` and a random peak on ``shortcut_pointing``.

The tube region is the tube mask dilated by ``radius`` pixels (default ``max(1, S // 64)``):
a tube is 1-3 px wide while maps come from a stride-16/32 grid, so an exact-pixel test would
miss a map that plainly follows the tube. All three are fractions; NaN when no image has a tube.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .chexlocalize import most_representative_point, normalize_map
from .common import MetricInputError, to_numpy

__all__ = ["ShortcutEvaluator", "default_radius"]


def default_radius(image_size: int) -> int:
    """Tolerance (pixels) around the tube: ``max(1, image_size // 64)``."""
    return max(1, int(image_size) // 64)


class ShortcutEvaluator:
    """Accumulates the shortcut metrics (see the module docstring).

    Args:
        radius: dilation of the tube mask, pixels (>= 0).
    """

    def __init__(self, radius: int = 2) -> None:
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise MetricInputError(f"shortcut: radius must be an integer >= 0, got {radius!r}")
        self.radius = radius
        size = 2 * radius + 1
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.pointing = 0.0
        self.energy = 0.0
        self.area = 0.0

    def accumulate(self, maps: Any, tubes: Any, lesions: Any) -> None:
        """Add images (those without a tube are ignored).

        Args:
            maps: float ``[N, H, W]`` confounder-class maps at the image resolution.
            tubes: bool ``[N, H, W]`` tube masks (empty: no tube on that image).
            lesions: bool ``[N, H, W]`` the confounder class's lesion masks.
        """
        m = to_numpy(maps).astype(np.float64)
        t = to_numpy(tubes).astype(bool)
        les = to_numpy(lesions).astype(bool)
        if m.ndim != 3 or t.shape != m.shape or les.shape != m.shape:
            raise MetricInputError(
                f"shortcut: maps {m.shape}, tubes {t.shape} and lesions {les.shape} must all be "
                "[N, H, W]"
            )
        for j in np.flatnonzero(t.any(axis=(1, 2))):
            region = cv2.dilate(t[j].astype(np.uint8), self._kernel).astype(bool) & ~les[j]
            r, c = most_representative_point(m[j])
            self.pointing += float(region[r, c])
            area = float(region.mean())
            norm = normalize_map(m[j])
            total = 0.0 if norm is None else float(norm.sum())
            if norm is None or total <= 0:  # constant map: uniform mass
                self.energy += area
            else:
                self.energy += float(norm[region].sum()) / total
            self.area += area
            self.n += 1

    def compute(self) -> dict[str, float]:
        """``shortcut_pointing``, ``shortcut_energy``, ``shortcut_area``."""
        if self.n == 0:
            return dict.fromkeys(
                ("shortcut_pointing", "shortcut_energy", "shortcut_area"), math.nan
            )
        return {
            "shortcut_pointing": self.pointing / self.n,
            "shortcut_energy": self.energy / self.n,
            "shortcut_area": self.area / self.n,
        }
