"""A synthetic frontal chest film with exact lesion boxes and masks: the embedded default dataset.

Every image is rendered from ``(spec, stream, index)`` alone, so no files are needed, item ``i`` of
a split never depends on the order of access or on the split's size, and train/val/test come
from disjoint seed streams.

What is drawn (grayscale, bone and fluid white, air black, as on a chest film): a torso with
shoulders and a rounded soft-tissue profile, two lung fields of varying shape (apex, lateral wall,
costophrenic angle, diaphragm dome), mediastinum with trachea and aortic knob, the heart, spine,
clavicles, posterior and anterior ribs, vascular markings that fade towards the periphery, hila,
a gastric bubble, exposure variation and film grain. Lesion classes, in this order
(:data:`PHANTOM_CLASSES`), differ in size and appearance roughly as the NIH box classes do:

* ``nodule`` -- small round opacity (diameter about 2--8 % of the image side);
* ``mass`` -- larger lobulated opacity (about 8--25 %);
* ``cardiomegaly`` -- an enlarged heart silhouette (cardiothoracic ratio above 0.5); its mask is
  the whole heart;
* ``effusion`` -- basal opacity with a meniscus rising along the lateral chest wall, blunting
  the costophrenic angle (one or both sides);
* ``pneumothorax`` -- a peripheral crescent without lung markings, bounded by a thin visible
  pleural line.

Conventions (those of :mod:`lesionsweep.data.types`): images are ``uint8`` ``[H, W]`` with
``H == W == image_size``; boxes are ``float32`` rows ``(class_index, x0, y0, x1, y1)`` in
continuous pixel coordinates, the tight box of the lesion's mask (``x0`` = min column,
``x1`` = max column + 1, same for rows); masks are ``bool`` ``[K, H, W]``, one plane per class, the
union of that class's lesions. Lesions of one class never touch, so each 8-connected component of
a mask plane is exactly one lesion and has exactly one box.

Knobs (:class:`PhantomSpec`): image size, prevalence per class, difficulty (lower lesion
contrast, more size jitter, more noise) and an optional shortcut confounder: a radio-opaque tube
(chest drain or nasogastric tube) that appears with probability ``confounder_prob`` on images
that carry ``confounder_class`` and with ``confounder_base_rate`` on images that do not. The tube
is drawn from its own random stream, so switching the confounder on or off changes only the tube,
never the anatomy or the lesions.

Speed (``benchmarks/bench_phantom.py``; target >= 500 images/s at 256 px on one core): at these
sizes every numpy call costs about a microsecond whatever its size, so the renderer is written to
make few of them. The anatomy is drawn at half resolution (at least 64 px) on cropped windows and
upsampled bilinearly; fields that are sums or products of a row and a column profile come from
small matrix products (the four terms of both lungs' signed distance are one batched product,
the row profiles of torso, mediastinum and trachea another); clipping uses OpenCV thresholds.
Vessel trees, rib cages, film grain, clavicles, vertebrae and gastric bubbles come from small
per-size banks (fixed seeds, stored as scaled ``float32``) that each image shifts by whole work
pixels, mirrors and mixes; the tone curve is a lookup table. Nodules and masses are drawn at full
resolution. The masks of cardiomegaly, effusion and pneumothorax are cut at full resolution from
the same signed-distance fields that drew them, upsampled exactly like the image (at factor 2
only the block around the window). Item seeds are BLAKE2b hashes of ``(seed, stream, index)``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lesionsweep.data.types import DatasetInfo, Sample
from lesionsweep.errors import DataError
from numpy.random.bit_generator import ISeedSequence

__all__ = [
    "PHANTOM_CLASSES",
    "PhantomSpec",
    "PhantomItem",
    "PhantomDataset",
    "render_phantom",
    "save_preview",
    "split_stream",
]

PHANTOM_CLASSES: tuple[str, ...] = ("nodule", "mass", "cardiomegaly", "effusion", "pneumothorax")
_NODULE, _MASS, _CARDIO, _EFFUSION, _PTX = range(5)

MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 1024

_SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_SPLIT_ALIASES: dict[str, str] = {"val-loc": "val", "test-loc": "test"}


# ---------------------------------------------------------------------------------------------
# Spec and item
# ---------------------------------------------------------------------------------------------


def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"phantom: {name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise DataError(f"phantom: {name} must be in [0, 1], got {value!r}")
    return v


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"phantom: {name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise DataError(f"phantom: {name} must be {allowed}, got {v}")
    return v


@dataclass(frozen=True)
class PhantomSpec:
    """What to render. Validated on construction (bad values raise :class:`DataError`).

    Attributes:
        image_size: side of the square image in pixels, 64..1024.
        prevalence: probability that an image carries each class: one float in [0, 1] for all
            classes, or a mapping ``class name -> float`` (classes not named get 0).
        difficulty: in [0, 1]; higher means lower lesion contrast, more size jitter, more noise.
        confounder_class: class the shortcut tube co-occurs with, or ``None`` for no tube.
        confounder_prob: P(tube | image carries ``confounder_class``).
        confounder_base_rate: P(tube | image does not carry ``confounder_class``).
        seed: non-negative integer; the same seed renders the same bytes.
    """

    image_size: int = 128
    prevalence: float | Mapping[str, float] = 0.3
    difficulty: float = 0.3
    confounder_class: str | None = None
    confounder_prob: float = 0.9
    confounder_base_rate: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        object.__setattr__(self, "image_size", int(self.image_size))
        if isinstance(self.prevalence, Mapping):
            unknown = [k for k in self.prevalence if k not in PHANTOM_CLASSES]
            if unknown:
                raise DataError(
                    f"phantom: prevalence names unknown classes {unknown}; "
                    f"allowed: {list(PHANTOM_CLASSES)}"
                )
            prev = {k: _check_unit(f"prevalence[{k!r}]", v) for k, v in self.prevalence.items()}
            object.__setattr__(self, "prevalence", prev)  # a copy (picklable, unlike a proxy)
        else:
            object.__setattr__(self, "prevalence", _check_unit("prevalence", self.prevalence))
        object.__setattr__(self, "difficulty", _check_unit("difficulty", self.difficulty))
        if self.confounder_class is not None and self.confounder_class not in PHANTOM_CLASSES:
            raise DataError(
                f"phantom: confounder_class {self.confounder_class!r} is not a phantom class; "
                f"allowed: {list(PHANTOM_CLASSES)} or None"
            )
        for name in ("confounder_prob", "confounder_base_rate"):
            object.__setattr__(self, name, _check_unit(name, getattr(self, name)))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0))

    def class_prevalences(self) -> tuple[float, ...]:
        """Prevalence of each class of :data:`PHANTOM_CLASSES`, in that order."""
        if isinstance(self.prevalence, Mapping):
            return tuple(float(self.prevalence.get(c, 0.0)) for c in PHANTOM_CLASSES)
        return (float(self.prevalence),) * len(PHANTOM_CLASSES)


@dataclass
class PhantomItem:
    """One rendered phantom (numpy).

    Attributes:
        image: ``uint8`` ``[H, W]``.
        labels: ``float32`` ``[K]`` (K = 5, :data:`PHANTOM_CLASSES` order), 1 iff the class's mask
            plane is non-empty.
        boxes: ``float32`` ``[N, 5]`` rows ``(class_index, x0, y0, x1, y1)``, continuous pixel
            coordinates, one row per lesion, sorted by class.
        masks: ``bool`` ``[K, H, W]``.
        meta: ``confounder`` (bool), ``confounder_kind`` ("drain", "ng_tube" or None),
            ``confounder_box`` ((x0, y0, x1, y1) or None), ``confounder_mask`` (bool ``[H, W]`` or
            None), ``stream``, ``index``, ``seed``.
    """

    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Lesion:
    cls: int
    y0: int
    x0: int
    mask: np.ndarray  # bool [h, w], trimmed to its tight box

    @property
    def box(self) -> tuple[float, float, float, float]:
        h, w = self.mask.shape
        return (float(self.x0), float(self.y0), float(self.x0 + w), float(self.y0 + h))


@dataclass
class _Compact:
    """A rendered item with masks stored as trimmed crops (what the in-memory cache holds)."""

    image: np.ndarray  # uint8 [S, S]
    lesions: list[_Lesion]
    tube: _Lesion | None
    tube_kind: str | None
    stream: int
    index: int
    seed: int

    def labels(self) -> np.ndarray:
        out = np.zeros(len(PHANTOM_CLASSES), dtype=np.float32)
        for les in self.lesions:
            out[les.cls] = 1.0
        return out

    def boxes(self) -> np.ndarray:
        if not self.lesions:
            return np.zeros((0, 5), dtype=np.float32)
        return np.array([(les.cls, *les.box) for les in self.lesions], dtype=np.float32)

    def meta(self, as_torch: bool = False) -> dict[str, Any]:
        tube_mask: Any = None
        if self.tube is not None:
            s = self.image.shape[0]
            m = np.zeros((s, s), dtype=bool)
            h, w = self.tube.mask.shape
            m[self.tube.y0 : self.tube.y0 + h, self.tube.x0 : self.tube.x0 + w] = self.tube.mask
            tube_mask = torch.from_numpy(m) if as_torch else m
        return {
            "confounder": self.tube is not None,
            "confounder_kind": self.tube_kind,
            "confounder_box": None if self.tube is None else self.tube.box,
            "confounder_mask": tube_mask,
            "stream": self.stream,
            "index": self.index,
            "seed": self.seed,
        }


# ---------------------------------------------------------------------------------------------
# Per-size precomputation (cached per process)
# ---------------------------------------------------------------------------------------------

# lung signed distance: the fixed columns of the row factors of its four terms (see the lungs
# in _render_anatomy): (a, -1, 0), (a, 1, 0), (a, 0, -1), (a, 0, 0)
_SDF_PATTERN = np.array(
    [[[-1.0, 0.0]], [[1.0, 0.0]], [[0.0, -1.0]], [[0.0, 0.0]]], dtype=np.float32
)
_LOW_G = 6  # grid resolution of the low-frequency exposure / soft-tissue field
_VESSEL_VARIANTS = 6


def _work_size(size: int) -> int:
    """Resolution of the anatomy layer: half the image side (at least 64), upsampled after."""
    return max(MIN_IMAGE_SIZE, size // 2)


@functools.lru_cache(maxsize=16)
def _pixel_centres(size: int) -> np.ndarray:
    """``float32 [S]``: pixel centre coordinates ``j + 0.5``."""
    return np.arange(size, dtype=np.float32) + 0.5


@functools.lru_cache(maxsize=16)
def _smooth_matrix(size: int, g: int) -> np.ndarray:
    """``float32 [S, g + 2]`` Gaussian-RBF upsampling matrix; ``M @ N @ M.T`` of a standard
    normal ``N`` is a smooth field of about unit variance with correlation length ~ S / g."""
    centres = (np.arange(g + 2, dtype=np.float64) - 0.5) / g  # one node beyond each border
    xn = (np.arange(size) + 0.5) / size
    w = np.exp(-0.5 * ((xn[:, None] - centres[None, :]) * g / 0.75) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w /= np.sqrt(np.mean((w**2).sum(axis=1)))
    return w.astype(np.float32)


def _grain_bank(size: int) -> np.ndarray:
    """``int8 [S + P, S + P]`` fixed film-grain bank (std ~ 32); items take shifted crops."""
    pad = max(8, size // 2)
    bank_rng = np.random.default_rng(0x5EED_F11A)
    grain = bank_rng.standard_normal((size + pad, size + pad), dtype=np.float32) * 32.0
    return np.clip(grain, -127, 127).astype(np.int8)


_ANGLE_BINS = 256
_ANGLE_THETA = (np.arange(_ANGLE_BINS) + 0.5) * (2.0 * math.pi / _ANGLE_BINS) - math.pi  # centres
# cos and sin of the lobulation harmonics k = 2, 3, ... over the angle bin centres: a radius
# table r (1 + sum_k c_k cos(k theta + phi_k)) is one product with these rows
_HARMONICS = np.concatenate(
    [
        np.cos(np.arange(2, 6)[:, None] * _ANGLE_THETA),
        np.sin(np.arange(2, 6)[:, None] * _ANGLE_THETA),
    ]
)


@functools.lru_cache(maxsize=8)
def _angle_bins(size: int) -> tuple[np.ndarray, int]:
    """``uint8 [2R + 1, 2R + 1]`` angle bin (of ``_ANGLE_BINS`` = 256 over [-pi, pi)) of each
    offset ``(row - R, col - R)`` from a centre pixel, and ``R`` (larger than any lesion window).
    A lookup table over the bins maps a window of it to per-pixel values (``cv2.LUT``)."""
    big_r = int(0.32 * size) + 6
    off = np.arange(-big_r, big_r + 1, dtype=np.float64)
    theta = np.arctan2(off[:, None], off[None, :])
    b = np.floor((theta + math.pi) * (_ANGLE_BINS / (2.0 * math.pi))).astype(np.intp)
    return np.minimum(b, _ANGLE_BINS - 1).astype(np.uint8), big_r


def _vessel_bank(size: int) -> tuple[np.ndarray, int]:
    """Fixed bank of pulmonary vessel trees ``uint8 [V, S + 2P, S + 2P]`` and the pad ``P``.

    Each variant holds two branching trees whose roots (the hila) sit at ``(0.5 -+ 0.1) * S``,
    ``0.45 * S`` (plus the pad); the bank is symmetric about its centre line, so a horizontally
    flipped variant is again a valid pair of trees. Items pick a variant per side and shift it to
    their own hila.
    """
    pad = max(4, int(0.08 * size))
    n = size + 2 * pad
    trng = np.random.default_rng(0xB100D)
    bank = np.zeros((_VESSEL_VARIANTS, n, n), dtype=np.uint8)
    thick0 = 0.014 * size
    for var in range(_VESSEL_VARIANTS):
        canvas = bank[var]
        for side in (-1.0, 1.0):
            hx, hy = pad + size * (0.5 + 0.1 * side), pad + size * 0.45
            stack = [
                (
                    hx,
                    hy,
                    a + 0.12 * trng.standard_normal(),
                    trng.uniform(0.07, 0.1) * size,
                    thick0,
                    0,
                )
                for a in (-1.35, -0.75, -0.1, 0.5, 1.1)
            ]
            while stack:
                x, y, ang, length, thick, depth = stack.pop()
                pts = [(x, y)]
                for _ in range(3):
                    ang += 0.12 * trng.standard_normal()
                    x += side * math.cos(ang) * length / 3
                    y += math.sin(ang) * length / 3
                    pts.append((x, y))
                value = int(255 * min(1.0, max(0.3, thick / thick0)) ** 0.7)
                cv2.polylines(
                    canvas,
                    [np.round(np.array(pts) * 16).astype(np.int32)[:, None, :]],
                    False,
                    value,
                    max(1, round(thick)),
                    cv2.LINE_AA,
                    4,
                )
                if depth < 6:
                    for sign in (-1.0, 1.0):
                        stack.append(
                            (
                                x,
                                y,
                                ang + sign * trng.uniform(0.2, 0.5),
                                length * trng.uniform(0.68, 0.85),
                                thick * 0.74,
                                depth + 1,
                            )
                        )
        # hila: soft blobs at the roots of the trees
        yy = (np.arange(n) + 0.5 - pad - 0.45 * size) / (0.06 * size)
        for side in (-1.0, 1.0):
            xx = (np.arange(n) + 0.5 - pad - (0.5 + 0.1 * side) * size) / (0.042 * size)
            blob = 80.0 * np.exp(-np.add.outer(yy * yy, xx * xx))
            np.maximum(canvas, blob.astype(np.uint8), out=canvas)
        sigma = max(0.5, 0.0015 * size)
        bank[var] = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return bank, pad


_RIB_VARIANTS = 8
_RIB_TOP, _RIB_BOT, _RIB_HALF = 0.08, 0.84, 0.405  # reference bony thorax (fractions of S)


def _rib_bank(size: int) -> tuple[np.ndarray, int]:
    """Fixed bank of rib cages ``uint8 [V, S + 2P, S + 2P]`` (255 = full rib) and the pad ``P``.

    Posterior ribs are arcs that rise from the spine and fall towards the lateral wall; fainter
    anterior ribs descend medially and cross them. Each variant has its own spacing, phase and
    curvature, drawn for a reference thorax centred in the canvas; items pick a variant (maybe
    mirrored: the canvas is symmetric) and shift it onto their own thorax.
    """
    pad = max(4, int(0.08 * size))
    n = size + 2 * pad
    brng = np.random.default_rng(0x21B5)
    pc = (np.arange(n, dtype=np.float64) + 0.5 - pad) / size  # normalised image coordinates
    dm = np.abs(pc - 0.5)
    edge = max(0.9, size / 256.0) / size  # soft edge (normalised)
    top, bot = _RIB_TOP, _RIB_BOT
    bank = np.zeros((_RIB_VARIANTS, n, n), dtype=np.uint8)
    for var in range(_RIB_VARIANTS):
        sp = (bot - top) / brng.uniform(10.5, 12.0)
        y0 = top + brng.uniform(0.0, sp)
        a_p, b_p = brng.uniform(0.3, 0.45), brng.uniform(1.5, 2.1)
        q = np.subtract.outer((pc - y0) / sp, (-a_p * dm + b_p * dm * dm) / sp)
        ribs = _rib_bands(q, 0.21, sp / (1.2 * edge))
        base_a = brng.uniform(0.3, 0.45) * (0.45 - dm) / sp
        qa = np.subtract.outer((pc - y0 - 0.4 * sp) / (1.15 * sp), base_a / 1.15)
        ribs_a = _rib_bands(qa, 0.17, sp / (1.5 * edge))
        ribs_a *= (0.45 * np.clip((dm - 0.1) / 0.08, 0, 1))[None, :]
        ribs += ribs_a
        ex = np.clip((dm - 0.025) / 0.03, 0, 1) * np.clip((_RIB_HALF + 0.02 - dm) / 0.03, 0, 1)
        ey = np.clip((pc - top) / 0.04, 0, 1) * np.clip((bot - pc) / 0.06, 0, 1)
        ribs *= np.multiply.outer(ey, ex)
        bank[var] = np.clip(ribs * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return bank, pad


@functools.lru_cache(maxsize=8)
def _work_grid(sw: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """``float32 [sw]`` work-resolution pixel centres in full-resolution px, and the same / s."""
    pc = _pixel_centres(sw) * np.float32(s / sw)
    return pc, pc / s


@functools.lru_cache(maxsize=8)
def _work_grid1(sw: int, s: int) -> np.ndarray:
    """``float32 [2, sw]``: the work pixel centres in full px over a row of ones."""
    out = np.ones((2, sw), dtype=np.float32)
    out[0] = _work_grid(sw, s)[0]
    return out


@functools.lru_cache(maxsize=8)
def _clavicle_stamp(sw: int, s: int) -> tuple[np.ndarray, int, int]:
    """Both clavicles at work resolution: ``float32 [H, W]`` and the stamp pixel ``(oy, ox)``
    whose centre sits on the reference point (the thorax midline ``x``, ``y`` = the top of the
    clavicles' medial ends).

    In full px relative to that point a clavicle is a band ``0.016 s`` wide (soft edge ``e``)
    around ``y = s (-0.25 d + 0.25 d^2)``, ``d = |x| / s``, fading in for ``d`` in 0.03..0.05
    and out for ``d`` in 0.30..0.33; its attenuation is 0.1.
    """
    kw = s / sw
    e = max(0.8, s / 256.0, 0.9 * kw)
    oy, ox = math.ceil(0.08 * s / kw), math.ceil(0.34 * s / kw)
    ys = (np.arange(oy + math.ceil(0.03 * s / kw) + 1) - oy) * kw
    dcl = np.abs(np.arange(2 * ox + 1) - ox) * kw / s
    yc = s * (0.25 * dcl * dcl - 0.25 * dcl)
    band = np.clip((0.016 * s - np.abs(ys[:, None] - yc[None, :])) / e, 0.0, 1.0)
    band *= 0.1 * np.clip((dcl - 0.03) / 0.02, 0, 1) * np.clip((0.33 - dcl) / 0.03, 0, 1)
    return band.astype(np.float32), oy, ox


_VERTEBRA_LEVELS = 16
_BUBBLE_LEVELS = 8


@functools.lru_cache(maxsize=8)
def _bubble_bank(sw: int, s: int) -> list[list[np.ndarray]]:
    """Gastric bubbles at work resolution: ``[ix][iy]`` is the soft ellipse (1 inside, edge
    0.3 wide in squared radius) with half axes ``s * (0.04 + 0.03 * (ix + 0.5) / L)`` and
    ``s * (0.02 + 0.015 * (iy + 0.5) / L)``, ``float32 [2 hy + 1, 2 hx + 1]``, centred on its
    middle pixel."""
    kw = s / sw
    e = max(0.8, s / 256.0, 0.9 * kw)
    out = []
    for ix in range(_BUBBLE_LEVELS):
        grx = s * (0.04 + 0.03 * (ix + 0.5) / _BUBBLE_LEVELS)
        hx = math.ceil((grx + 2 * e) / kw)
        x = (np.arange(2 * hx + 1) - hx) * kw / grx
        row = []
        for iy in range(_BUBBLE_LEVELS):
            gry = s * (0.02 + 0.015 * (iy + 0.5) / _BUBBLE_LEVELS)
            hy = math.ceil((gry + 2 * e) / kw)
            y = (np.arange(2 * hy + 1) - hy) * kw / gry
            eb = y[:, None] ** 2 + x[None, :] ** 2
            row.append(np.clip(0.5 - (eb - 1.0) / 0.3, 0.0, 1.0).astype(np.float32))
        out.append(row)
    return out


@functools.lru_cache(maxsize=8)
def _vertebra_bank(sw: int, s: int) -> np.ndarray:
    """Row profiles of the vertebral column, ``float32 [L, 2 sw]``: level ``q`` has the period
    ``s * p``, ``p`` the centre of bin ``q`` of 0.042..0.05 split into ``L`` bins. Value at
    work row ``m``: ``0.07 + 0.03 * clip(6 |frac(y / (s p)) - 0.5| - 0.3, 0, 1)``, ``y`` the
    pixel centre (full px); items take ``sw`` rows from an offset that sets the phase."""
    kw = s / sw
    p = 0.042 + (np.arange(_VERTEBRA_LEVELS) + 0.5) * (0.008 / _VERTEBRA_LEVELS)
    y = (np.arange(2 * sw) + 0.5) * kw
    ph = (y[None, :] / (s * p[:, None])) % 1.0
    return (0.07 + 0.03 * np.clip(np.abs(ph - 0.5) * 6 - 0.3, 0, 1)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _midline_bank(sw: int, s: int) -> np.ndarray:
    """Column profiles about the midline, ``float32 [3, 2 sw]``: trachea (-0.1 at its centre,
    0.004 s right of the midline, half width 0.02 s), spine (half width 0.034 s) and ones; column
    ``m`` lies ``(m - sw) * kw`` px from the midline (``kw = s / sw``)."""
    dx = (np.arange(2 * sw) - sw) * (s / sw)
    out = np.ones((3, 2 * sw), dtype=np.float32)
    out[0] = -0.1 * np.clip(1.0 - ((dx - 0.004 * s) / (0.02 * s)) ** 2, 0, 1)
    out[1] = np.sqrt(np.clip(1.0 - (dx / (0.034 * s)) ** 2, 0, 1))
    return out


@functools.lru_cache(maxsize=8)
def _low_rhs(sw: int) -> np.ndarray:
    """``float32 [G + 1, sw]``: ``0.035 * M.T`` over a row of ones (see :func:`_render_anatomy`)."""
    m = _smooth_matrix(sw, _LOW_G)
    rhs = np.ones((m.shape[1] + 1, sw), dtype=np.float32)
    rhs[:-1] = 0.035 * m.T
    return rhs


def _float_bank(bank: np.ndarray, scale: float) -> np.ndarray:
    """``float32 [2, V, N, N]``: a uint8 bank times ``scale``, then the same mirrored left-right."""
    out = np.empty((2, *bank.shape), dtype=np.float32)
    np.multiply(bank, np.float32(scale), out=out[0])
    out[1] = out[0, :, :, ::-1]
    return out


@functools.lru_cache(maxsize=8)
def _vessel_bank_f(size: int) -> tuple[np.ndarray, int]:
    """:func:`_vessel_bank` as ``float32 [2, V, N, N]`` (times 0.2 / 255, plain and mirrored)."""
    bank, pad = _vessel_bank(size)
    return _float_bank(bank, 0.2 / 255.0), pad


@functools.lru_cache(maxsize=8)
def _rib_bank_f(size: int) -> tuple[np.ndarray, int]:
    """:func:`_rib_bank` as ``float32 [2, V, N, N]`` (times 0.07 / 255, plain and mirrored)."""
    bank, pad = _rib_bank(size)
    return _float_bank(bank, 0.07 / 255.0), pad


@functools.lru_cache(maxsize=4)
def _grain_bank_f(size: int) -> np.ndarray:
    """:func:`_grain_bank` as ``float32 [2, S + P, S + P]`` over 32 (std ~ 1), plain and
    flipped upside down."""
    bank = _grain_bank(size)
    out = np.empty((2, *bank.shape), dtype=np.float32)
    np.multiply(bank, np.float32(1.0 / 32.0), out=out[0])
    out[1] = out[0, ::-1]
    return out


# ---------------------------------------------------------------------------------------------
# Random draws and geometry
# ---------------------------------------------------------------------------------------------


class _Draws:
    """Scalar random draws taken from bulk uniform buffers (numpy scalar calls are slow)."""

    def __init__(self, rng: np.random.Generator, n: int = 160) -> None:
        self.rng = rng
        self.buf: list[float] = rng.random(n).tolist()
        self.n = n
        self.i = 0

    def _refill(self) -> None:
        self.buf = self.rng.random(64).tolist()
        self.n = 64
        self.i = 0

    def u(self, a: float = 0.0, b: float = 1.0) -> float:
        if self.i >= self.n:
            self._refill()
        x = self.buf[self.i]
        self.i += 1
        return a + (b - a) * x

    def normal(self) -> float:
        return math.sqrt(-2.0 * math.log(1.0 - self.u())) * math.cos(2.0 * math.pi * self.u())

    def integer(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)


class _KeyDraws(_Draws):
    """Draws for short streams, taken straight from BLAKE2b hashes of a key and a block counter
    (16 uniforms with 32 bits each per block): cheaper than seeding a generator."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.block = 0
        self._refill()

    def _refill(self) -> None:
        h = hashlib.blake2b(self.key + self.block.to_bytes(4, "little"), digest_size=64)
        self.buf = [v * 2.0**-32 for v in struct.unpack("<16I", h.digest())]
        self.block += 1
        self.n = 16
        self.i = 0


def _lung_params(lungs: tuple[_Lung, ...], scale: float = 1.0) -> np.ndarray:
    """``float32 [8, B, 1]`` shape parameters of ``B`` lungs for :func:`_lung_sdf`."""
    return np.array(
        [
            [1.0 / lg.t_apex for lg in lungs],
            [1.0 / (0.45 * lg.t_apex) for lg in lungs],
            [lg.ua for lg in lungs],
            [1.0 - lg.ua for lg in lungs],
            [lg.bulge for lg in lungs],
            [lg.dd for lg in lungs],
            [lg.w * scale for lg in lungs],
            [lg.h * scale for lg in lungs],
        ],
        dtype=np.float32,
    ).reshape(8, len(lungs), 1)


def _lung_sdf(
    uu: np.ndarray, vv: np.ndarray, prm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate signed distance (px, negative inside) of ``B`` lungs, ``float32 [B, R, C]``.

    ``uu`` ``float32 [B, C]`` (columns) and ``vv`` ``float32 [B, R]`` (rows) are lung
    coordinates: u = 0 medial border, 1 lateral wall; v = 0 apex, 1 costophrenic angle; ``prm``
    from :func:`_lung_params`. The distance is the max of four terms, each a row profile plus a
    column profile (rows ``(a, -1, 0)``, ``(a, 1, 0)``, ``(a, 0, -1)``, ``(a, 0, 0)`` times the
    columns ``(1, u w, v_bot h)``), so one batched matrix product gives all four. Also returns
    the clipped ``v`` and ``u``.
    """
    ita, itm, ua, oua, bulge, dd, lw, lh = prm
    nb, nr, nc = vv.shape[0], vv.shape[1], uu.shape[1]
    vc = _c01(vv)
    t = np.minimum(vc * ita, 1.0)
    u_hi = ua + oua * np.sqrt(t * (2.0 - t)) + bulge * np.sin(np.pi * vc)
    t = np.minimum(vc * itm, 1.0)
    u_lo = ua * (1.0 - np.sqrt(t * (2.0 - t)))
    uc = _c01(uu)
    v_bot = 1.0 - dd * (1.0 - uc * uc)
    lhs = np.empty((nb, 4, nr, 3), dtype=np.float32)
    lhs[..., 1:] = _SDF_PATTERN
    np.multiply(u_lo, lw, out=lhs[:, 0, :, 0])  # u_lo w - u w: medial border
    np.multiply(u_hi, -lw, out=lhs[:, 1, :, 0])  # u w - u_hi w: lateral wall
    np.multiply(vv, lh, out=lhs[:, 2, :, 0])  # v h - v_bot h: diaphragm
    np.negative(lhs[:, 2, :, 0], out=lhs[:, 3, :, 0])  # -v h: apex
    rhs = np.empty((nb, 3, nc), dtype=np.float32)
    rhs[:, 0] = 1.0
    np.multiply(uu, lw, out=rhs[:, 1])
    np.multiply(v_bot, lh, out=rhs[:, 2])
    terms = np.matmul(lhs.reshape(nb, 4 * nr, 3), rhs).reshape(nb, 4, nr, nc)
    f = np.maximum(terms[:, 0], terms[:, 1])
    np.maximum(f, terms[:, 2], out=f)
    np.maximum(f, terms[:, 3], out=f)
    return f, vc, uc


def _clip01(a: np.ndarray) -> np.ndarray:
    """Clip a 2-D float array to [0, 1] in place (rows may be strided, columns contiguous).

    OpenCV's thresholds are several times faster than ``np.maximum`` / ``np.minimum`` with a
    scalar operand on the small arrays drawn here.
    """
    cv2.threshold(a, 0.0, 0.0, cv2.THRESH_TOZERO, dst=a)
    cv2.threshold(a, 1.0, 0.0, cv2.THRESH_TRUNC, dst=a)
    return a


def _c01(a: np.ndarray) -> np.ndarray:
    """``clip(a, 0, 1)`` for small arrays (cheaper than ``np.clip``)."""
    return np.minimum(np.maximum(a, 0.0), 1.0)


def _ramp(a: np.ndarray, scale: float) -> np.ndarray:
    """``clip(0.5 - a / scale, 0, 1)``: soft indicator of ``a < 0``, edge ``scale`` wide."""
    out = a * (-1.0 / scale)
    out += 0.5
    return _clip01(out)


@dataclass
class _Lung:
    side: int  # -1: image left (patient right), +1: image right (patient left)
    xm: float  # medial border x (px)
    w: float  # width (px), lateral wall at xm + side * w
    yt: float  # apex y (px)
    h: float  # apex to costophrenic angle (px)
    ua: float  # apex position across the width (0 medial, 1 lateral)
    t_apex: float  # fraction of the height where the lateral wall is reached
    bulge: float  # lateral convexity
    dd: float  # diaphragm dome height as a fraction of h

    def window(self, size: int, margin: float) -> tuple[int, int, int, int]:
        xa, xb = sorted((self.xm, self.xm + self.side * self.w * (1.0 + self.bulge)))
        r0 = max(0, int(self.yt - margin))
        r1 = min(size, int(math.ceil(self.yt + self.h + margin)))
        c0 = max(0, int(xa - margin))
        c1 = min(size, int(math.ceil(xb + margin)))
        return r0, r1, c0, c1

    def uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x - self.xm) * (self.side / self.w), (y - self.yt) * (1.0 / self.h)

    def f_uv(self, u: np.ndarray, v: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Approximate signed distance (px, negative inside) on the grid ``v[:, None], u[None, :]``.

        ``u`` (columns) and ``v`` (rows) are lung coordinates: u = 0 medial border, 1 lateral
        wall; v = 0 apex, 1 costophrenic angle. ``scale`` multiplies the result (collapsed lung).
        """
        prm = _lung_params((self,), scale)
        return _lung_sdf(u.reshape(1, -1), v.reshape(1, -1), prm)[0][0]

    def f_point(self, x: float, y: float) -> float:
        """:meth:`f_uv` at one point (pure Python)."""
        u = (x - self.xm) * self.side / self.w
        v = (y - self.yt) / self.h
        vc = min(max(v, 0.0), 1.0)
        t = min(vc / self.t_apex, 1.0)
        u_hi = self.ua + (1.0 - self.ua) * math.sqrt(t * (2.0 - t))
        u_hi += self.bulge * math.sin(math.pi * vc)
        tm = min(vc / (0.45 * self.t_apex), 1.0)
        u_lo = self.ua * (1.0 - math.sqrt(tm * (2.0 - tm)))
        uc = min(max(u, 0.0), 1.0)
        v_bot = 1.0 - self.dd * (1.0 - uc * uc)
        return max((u_lo - u) * self.w, (u - u_hi) * self.w, (v - v_bot) * self.h, -v * self.h)


@dataclass
class _Heart:
    cx: float  # ellipse centre x (px)
    cy: float  # ellipse centre y (px)
    rx_l: float  # half width towards image left (at the centre row)
    rx_r: float  # half width towards image right
    ry: float
    shear: float  # long axis tilt: x shifts by shear * (y - cy)
    taper: float  # narrower at the top, wider at the base (egg shape)

    def cols(self, size: int, margin: float) -> tuple[int, int]:
        slack = abs(self.shear) * self.ry
        grow = 1.0 + self.taper
        c0 = max(0, int(self.cx - self.rx_l * grow - slack - margin))
        return c0, min(size, int(math.ceil(self.cx + self.rx_r * grow + slack + margin)))

    def f(self, grid1: np.ndarray, y: np.ndarray, floor: np.ndarray) -> np.ndarray:
        """Approximate signed distance (px, negative inside) on the grid of rows ``y`` (px) and
        the columns whose x (px) over ones is ``grid1`` (``float32 [2, n]``): ``float32``.

        The sheared, tapered ellipse is cut from below by ``floor`` (diaphragm y per column).
        """
        nr = y.shape[0]
        dy = y - self.cy
        width = dy * (self.taper / self.ry)
        width += 1.0
        np.maximum(width, 0.2, out=width)
        # one product gives, per row: (x - centre) / rx_r, (centre - x) / rx_l (their max is
        # the horizontal ellipse coordinate on either side of the long axis), the vertical
        # one (y - cy) / ry, and y - floor(x)
        rows = np.zeros((4, nr, 3), dtype=np.float32)
        np.divide(1.0 / self.rx_r, width, out=rows[0, :, 0])
        np.divide(-1.0 / self.rx_l, width, out=rows[1, :, 0])
        centre = dy * -self.shear
        centre -= self.cx
        np.multiply(rows[:2, :, 0], centre, out=rows[:2, :, 1])
        np.multiply(dy, 1.0 / self.ry, out=rows[2, :, 1])
        rows[3, :, 1] = y
        rows[3, :, 2] = -1.0
        cols = np.empty((3, grid1.shape[1]), dtype=np.float32)
        cols[:2] = grid1
        cols[2] = floor
        t = np.matmul(rows.reshape(4 * nr, 3), cols).reshape(4, nr, -1)
        q = np.maximum(t[0], t[1])
        q = cv2.magnitude(q, t[2])
        c = 0.5 * (min(self.rx_l, self.rx_r) + self.ry)
        q *= c
        q -= c
        np.maximum(q, t[3], out=q)
        return q


@dataclass
class _Mediastinum:
    """A band about ``cx``: ``hw_l`` to the image left; to the image right ``hw_r`` plus the
    aortic knob (a Gaussian bump of height ``knob``, sd 0.035 s, at ``knob_y``) plus a widening
    that ramps in over 0.1 s below the knob to 0.015 s (drawn in :func:`_render_anatomy`)."""

    cx: float
    hw_l: float  # half width to the image left (SVC / right atrium side), px
    hw_r: float  # half width to the image right, px
    knob_y: float  # aortic knob height, px
    knob: float  # aortic knob bulge, px
    carina: float  # carina height, px


@dataclass
class _Anatomy:
    cx: float
    lungs: tuple[_Lung, _Lung]
    heart: _Heart
    med: _Mediastinum
    thorax_half: float  # half width of the bony thorax (px)

    def diaphragm(self, grid1: np.ndarray) -> np.ndarray:
        """y (px) of the diaphragm under each column: the lungs' lower borders, joined linearly
        across the mediastinum. ``grid1`` is ``float32 [2, n]``, the columns' x (px) over ones;
        returns ``float32 [n]``.

        With ``u_l``, ``u_r`` the clipped lung u of the two lungs and ``t`` the clipped position
        between their medial borders, the border is ``base_l + (base_r - base_l) t + dome_l
        u_l^2 + dome_r u_r^2`` everywhere (at most one term varies in each part).
        """
        left, right = self.lungs
        base_l = left.yt + left.h * (1.0 - left.dd)  # dome top of each lung (u = 0)
        base_r = right.yt + right.h * (1.0 - right.dd)
        gap = 1.0 / (right.xm - left.xm)
        lines = np.array(
            [
                (-1.0 / left.w, left.xm / left.w),
                (1.0 / right.w, -right.xm / right.w),
                (gap, -left.xm * gap),
            ],
            dtype=np.float32,
        )
        ramps = np.matmul(lines, grid1)
        _clip01(ramps)
        np.square(ramps[:2], out=ramps[:2])
        coef = np.array([left.h * left.dd, right.h * right.dd, base_r - base_l], np.float32)
        out = np.matmul(coef, ramps)
        out += base_l
        return out


def _draw_anatomy(d: _Draws, s: int, cardiomegaly: bool, diff: float) -> _Anatomy:
    cx = s * (0.5 + 0.018 * d.normal())
    zoom = d.u(0.93, 1.04)
    yt = s * (0.5 - 0.37 * zoom + d.u(-0.02, 0.02))
    half = s * 0.405 * zoom * d.u(0.95, 1.03)
    lungs = []
    base = s * (0.5 + 0.29 * zoom + d.u(-0.04, 0.04))
    for side in (-1, 1):
        xm = cx + side * s * d.u(0.035, 0.06)
        lat = cx + side * half * d.u(0.96, 1.0)
        yb = base + s * d.u(-0.015, 0.015) - (0.02 * s if side < 0 else 0.0)
        top = yt + s * d.u(-0.012, 0.012)
        lungs.append(
            _Lung(
                side=side,
                xm=xm,
                w=abs(lat - xm),
                yt=top,
                h=yb - top,
                ua=d.u(0.3, 0.45),
                t_apex=d.u(0.55, 0.8),
                bulge=d.u(0.0, 0.05),
                dd=d.u(0.12, 0.22),
            )
        )
    left, right = lungs
    if cardiomegaly:
        lo, hi = 0.56 - 0.04 * diff, 0.66 - 0.08 * diff
    else:
        lo, hi = 0.37, 0.47
    ctr = d.u(lo, hi)  # cardiothoracic ratio
    width = ctr * 2.0 * half  # silhouette width at the centre row, `frac_l` left of the midline
    frac_l = d.u(0.34, 0.42)
    ry = s * d.u(0.15, 0.18) * (1.0 + (ctr - 0.42) * 0.7)
    floor_med = right.yt + right.h * (1.0 - right.dd)
    hcx = cx + width * (0.5 - frac_l)
    heart = _Heart(
        cx=hcx,
        cy=floor_med - d.u(0.15, 0.3) * ry,
        rx_l=hcx - cx + width * frac_l,
        rx_r=width * (1.0 - frac_l) - (hcx - cx),
        ry=ry,
        shear=d.u(0.05, 0.2),
        taper=d.u(0.12, 0.25),
    )
    knob_y = left.yt + s * d.u(0.12, 0.17)
    med = _Mediastinum(
        cx=cx,
        hw_l=s * d.u(0.05, 0.065),
        hw_r=s * d.u(0.058, 0.075),
        knob_y=knob_y,
        knob=s * d.u(0.025, 0.045),
        carina=knob_y + s * d.u(0.04, 0.07),
    )
    return _Anatomy(cx=cx, lungs=(left, right), heart=heart, med=med, thorax_half=half)


@dataclass
class _Effusion:
    level: float  # fluid level at the medial side, lung v units
    rise: float  # meniscus rise towards the lateral wall, lung v units
    strength: float

    def below(self, lung: _Lung, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """px below the meniscus (positive in the fluid) on the grid ``v[:, None], u[None, :]``."""
        v_m = self.level - self.rise * _c01(u) ** 2
        return np.subtract.outer(v * lung.h, v_m * lung.h)


@dataclass
class _Pneumothorax:
    scale: float  # collapsed lung size relative to the full lung
    au: float  # collapse anchor (lung u, v)
    av: float
    strength: float

    def collapsed_f(self, lung: _Lung, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Signed distance (px) to the collapsed lung: positive in the pleural air gap."""
        sc = self.scale
        return lung.f_uv(self.au + (u - self.au) / sc, self.av + (v - self.av) / sc, scale=sc)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


class _SeedKey(ISeedSequence):
    """Seeds a bit generator from a BLAKE2b hash of a key such as ``b"seed/stream/index"``.

    A few microseconds instead of the tens that :class:`numpy.random.SeedSequence` takes per item
    (a cost that shows at 500+ images/s); distinct keys give independent streams.
    """

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        dt = np.dtype(dtype)
        h = hashlib.blake2b(self.key, digest_size=n_words * dt.itemsize, person=b"lesionsweep-ph")
        return np.frombuffer(h.digest(), dtype=dt)


def _split_seed(seed: int, stream: int, index: int) -> np.random.Generator:
    """The item's own random generator: ``(seed, stream, index)`` hashed into a PCG64 state."""
    return np.random.Generator(np.random.PCG64(_SeedKey(f"{seed}/{stream}/{index}".encode())))


def _trim(cls: int, mask: np.ndarray, r0: int, c0: int) -> _Lesion | None:
    """The lesion of a ``bool`` window mask whose top-left pixel is ``(r0, c0)``, cut to its
    tight box, or ``None`` if the mask is empty."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0 or h == 0:
        return None
    return _Lesion(
        cls=cls, y0=r0 + y, x0=c0 + x, mask=np.ascontiguousarray(mask[y : y + h, x : x + w])
    )


def _cut(cls: int, mask: np.ndarray, r0: int, c0: int) -> _Lesion | None:
    """Like :func:`_trim`, keeping only the largest 8-connected component of the mask.

    The components are labelled on the mask's tight box only (cropping empty rows and columns
    neither splits nor reorders them)."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0 or h == 0:
        return None
    sub = mask[y : y + h, x : x + w]
    n, lab = cv2.connectedComponents(sub.view(np.uint8), connectivity=8)
    if n <= 2:  # background + one component
        return _Lesion(cls=cls, y0=r0 + y, x0=c0 + x, mask=np.ascontiguousarray(sub))
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return _trim(cls, lab == int(np.argmax(counts)), r0 + y, c0 + x)


_Field = tuple[int, int, int, int, np.ndarray]  # work-res window r0, r1, c0, c1 and its values


def _upsample_region(arr: np.ndarray, s: int, win: tuple[int, int, int, int]) -> np.ndarray:
    """Rows ``R0:R1``, columns ``C0:C1`` of ``cv2.resize(arr, (s, s), INTER_LINEAR)``.

    At the usual factor 2 only a block one source pixel wider than the region is resized: the
    bilinear weights of an output pixel depend only on its position modulo 2 and the border
    clamping is the same, so the values are identical to those of the full resize.
    """
    sw = arr.shape[0]
    r0, r1, c0, c1 = win
    if s == sw:
        return arr[r0:r1, c0:c1]
    if s != 2 * sw:
        return cv2.resize(arr, (s, s), interpolation=cv2.INTER_LINEAR)[r0:r1, c0:c1]
    a0, a1 = max(0, r0 // 2 - 1), min(sw, (r1 + 1) // 2 + 1)
    b0, b1 = max(0, c0 // 2 - 1), min(sw, (c1 + 1) // 2 + 1)
    up = cv2.resize(
        arr[a0:a1, b0:b1], (2 * (b1 - b0), 2 * (a1 - a0)), interpolation=cv2.INTER_LINEAR
    )
    return up[r0 - 2 * a0 : r1 - 2 * a0, c0 - 2 * b0 : c1 - 2 * b0]


def _upsample_field(field_w: _Field, sw: int, s: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """A work-resolution window field at full resolution, aligned exactly like the image.

    The window is pasted on a canvas that is large and positive (outside) elsewhere and the
    canvas is resized with the same bilinear interpolation as the image (only the part the
    window needs, see :func:`_upsample_region`). Returns the ``float32`` field over the window
    and the window ``(r0, r1, c0, c1)`` in full-resolution pixels.
    """
    r0, r1, c0, c1, values = field_w
    if sw == s:
        return values, (r0, r1, c0, c1)
    kw = s / sw
    win = (int(r0 * kw), min(s, math.ceil(r1 * kw)), int(c0 * kw), min(s, math.ceil(c1 * kw)))
    if s == 2 * sw:  # a canvas one pixel larger than the window is enough
        a0, a1, b0, b1 = max(0, r0 - 1), min(sw, r1 + 1), max(0, c0 - 1), min(sw, c1 + 1)
        canvas = np.full((a1 - a0, b1 - b0), 1e4, dtype=np.float32)
        canvas[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0] = values
        up = cv2.resize(canvas, (2 * (b1 - b0), 2 * (a1 - a0)), interpolation=cv2.INTER_LINEAR)
        return up[win[0] - 2 * a0 : win[1] - 2 * a0, win[2] - 2 * b0 : win[3] - 2 * b0], win
    canvas = np.full((sw, sw), 1e4, dtype=np.float32)
    canvas[r0:r1, c0:c1] = values
    full = cv2.resize(canvas, (s, s), interpolation=cv2.INTER_LINEAR)
    return full[win[0] : win[1], win[2] : win[3]], win


def _render(spec: PhantomSpec, stream: int, index: int) -> _Compact:
    s = spec.image_size
    diff = spec.difficulty
    rng = _split_seed(spec.seed, stream, index)
    d = _Draws(rng)
    present = [d.u() < p for p in spec.class_prevalences()]
    anat = _draw_anatomy(d, s, present[_CARDIO], diff)
    effusions: dict[int, _Effusion] = {}
    if present[_EFFUSION]:
        first = d.integer(2)
        for k in [first, 1 - first] if d.u() < 0.3 else [first]:
            amount = d.u()
            effusions[k] = _Effusion(
                level=0.93 - 0.35 * amount + 0.05 * diff * d.u(),
                rise=d.u(0.12, 0.3),
                strength=(0.98 - 0.45 * diff) * d.u(0.85, 1.05),
            )
    ptx: dict[int, _Pneumothorax] = {}
    if present[_PTX]:
        ptx[d.integer(2)] = _Pneumothorax(
            scale=d.u(0.72, 0.84) + 0.08 * diff,
            au=0.05,
            av=d.u(0.9, 1.0),
            strength=(1.0 - 0.6 * diff) * d.u(0.85, 1.1),
        )

    sw = _work_size(s)
    a_w, occ_w, fields = _render_anatomy(anat, effusions, ptx, d, rng, sw, s)
    a_img = a_w if sw == s else cv2.resize(a_w, (s, s), interpolation=cv2.INTER_LINEAR)

    # --- exact masks of the anatomical lesions, at full resolution ---------------------------
    # cut from the same signed-distance fields that drew them, upsampled like the image
    lesions: list[_Lesion] = []
    busy = np.zeros((s, s), dtype=bool)  # pixels (with a margin) taken by lesions
    if present[_CARDIO]:
        hf, (r0, r1, c0, c1) = _upsample_field(fields["heart"], sw, s)
        les = _cut(_CARDIO, hf < 0, r0, c0)
        if les is not None:
            lesions.append(les)
    pc = _pixel_centres(s)
    for k, lung in enumerate(anat.lungs):
        if k not in effusions and k not in ptx:
            continue
        f, (r0, r1, c0, c1) = _upsample_field(fields[f"lung{k}"], sw, s)
        inside = f < 0  # in the lung and not behind the mediastinum / heart
        inside &= _upsample_region(occ_w, s, (r0, r1, c0, c1)) < 0.5
        if k in effusions:
            eff = effusions[k]
            e0 = max(r0, int(lung.yt + (eff.level - eff.rise) * lung.h) - 1)  # fluid rows only
            u, v = lung.uv(pc[c0:c1], pc[e0:r1])
            mask = eff.below(lung, u, v) > 0
            mask &= inside[e0 - r0 :]
            les = _cut(_EFFUSION, mask, e0, c0)
            if les is not None:
                lesions.append(les)
                h, w = les.mask.shape
                busy[les.y0 : les.y0 + h, les.x0 : les.x0 + w] |= les.mask
        if k in ptx:
            fc, _ = _upsample_field(fields[f"ptx{k}"], sw, s)
            mask = fc > 0
            mask &= inside
            les = _cut(_PTX, mask, r0, c0)
            if les is not None:
                lesions.append(les)
                h, w = les.mask.shape
                busy[les.y0 : les.y0 + h, les.x0 : les.x0 + w] |= les.mask

    # --- focal lesions at full resolution: masses, then nodules -----------------------------
    contrast = 1.0 - 0.65 * diff
    jitter = 0.12 + 0.3 * diff
    for cls in (_MASS, _NODULE):
        if not present[cls]:
            continue
        n = 1 + int(d.u() < (0.25 if cls == _NODULE else 0.1))
        n += int(n == 2 and cls == _NODULE and d.u() < 0.35)
        for j in range(n):
            les = _place_focal(d, cls, anat, occ_w, busy, s, contrast, jitter, a_img, j == 0)
            if les is not None:
                lesions.append(les)

    # --- shortcut confounder: a tube from its own random stream ---------------------------
    tube, tube_kind = None, None
    if spec.confounder_class is not None:
        cd = _KeyDraws(f"{spec.seed}/{stream}/{index}/tube".encode())
        has_cls = present[PHANTOM_CLASSES.index(spec.confounder_class)]
        p = spec.confounder_prob if has_cls else spec.confounder_base_rate
        if cd.u() < p:
            tube, tube_kind = _draw_tube(cd, anat, s, a_img)

    # --- film: grain, tone curve -----------------------------------------------------------
    bank = _grain_bank_f(s)  # [plain, upside down]
    n = bank.shape[1]
    oy, ox = d.integer(n - s + 1), d.integer(n - s + 1)
    if d.u() < 0.5:  # the crop at oy, flipped upside down
        gr = bank[1, n - oy - s : n - oy, ox : ox + s]
    else:
        gr = bank[0, oy : oy + s, ox : ox + s]
    sigma = (0.012 + 0.03 * diff) * d.u(0.8, 1.2) * (1.0 if d.u() < 0.5 else -1.0)
    cv2.scaleAdd(gr, sigma, a_img, dst=a_img)
    image = _tone(d, a_img)
    lesions.sort(key=lambda les: (les.cls, les.y0, les.x0))
    return _Compact(image, lesions, tube, tube_kind, stream, index, spec.seed)


def _render_anatomy(
    anat: _Anatomy,
    effusions: dict[int, _Effusion],
    ptx: dict[int, _Pneumothorax],
    d: _Draws,
    rng: np.random.Generator,
    sw: int,
    s: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, _Field]]:
    """The anatomy layer at work resolution ``sw`` (geometry in full-resolution px ``s``).

    Returns the attenuation image ``float32 [sw, sw]`` (white = high), the soft occluder
    (mediastinum and heart) ``float32 [sw, sw]`` and the signed-distance fields (work-res
    windows) that the full-resolution lesion masks are cut from: "heart", "lung<k>" for lungs
    with an effusion or pneumothorax, "ptx<k>" (collapsed lung).

    Every 2-D step runs on the smallest window that holds it; rank-1 terms (separable in rows
    and columns) are summed by small matrix products.
    """
    fields: dict[str, _Field] = {}
    kw = s / sw  # full px per work px
    pc, yn = _work_grid(sw, s)  # work pixel centres in full px, and over s
    grid1 = _work_grid1(sw, s)  # [pc; 1]: profiles a * pc + b are one product
    e = max(0.8, s / 256.0, 0.9 * kw)  # soft edge width of organ borders (full px)
    cx = anat.cx
    left, right = anat.lungs

    def span(a: float, b: float) -> tuple[int, int]:
        return max(0, int(a / kw)), min(sw, int(math.ceil(b / kw)))

    # --- row profiles: clipped linear ramps in y and a few unclipped lines, one product -------
    neck = 0.12 + 0.02 * d.u(-1, 1)
    noise = rng.standard_normal((_LOW_G + 2, _LOW_G + 2), dtype=np.float32)
    heel_a, heel_b = d.u(-0.05, 0.05), d.u(-0.04, 0.04)  # heel-effect ramp
    spine_p, spine_o = d.u(0.042, 0.05), d.u()  # vertebra period and phase
    med = anat.med
    sh_y = left.yt / s - 0.02  # shoulder line
    chest = anat.thorax_half / s + 0.045
    rows = np.array(
        [  # (a, b): the profile a * y + b of the pixel centre y (full px)
            (1.0 / (0.09 * s), (0.09 - sh_y) / 0.09),  # 0 neck -> shoulders   (clipped rows)
            (1.0 / (0.2 * s), -sh_y / 0.2),  # 1 shoulders -> chest
            (1.0 / (0.2 * s), -4.0),  # 2 waist
            (0.0, 1.0),  # 3 ones
            (-1.0 / (0.15 * s), 0.2 / 0.15),  # 4 brighter neck level
            (1.0 / (0.1 * s), -med.knob_y / (0.1 * s)),  # 5 descending aorta widening
            (-1.0 / (0.03 * s), med.carina / (0.03 * s)),  # 6 trachea down to the carina
            (0.0, 0.0),  # 7 vertebrae (filled from a bank below)              (unclipped)
            (heel_a / s, heel_b - 0.5 * heel_a),  # 8 heel-effect ramp
            (1.0 / (0.035 * s), -med.knob_y / (0.035 * s)),  # 9 aortic knob bump
        ],
        dtype=np.float32,
    )
    prof = np.matmul(rows, grid1)  # [10, sw]
    _clip01(prof[:7])
    np.square(prof[0], out=prof[0])
    np.power(prof[1], 0.7, out=prof[1])
    # torso half width (fraction of s; neck, shoulders, chest, waist) and soft-tissue level
    wts = [[0.62 - neck, chest - 0.62, -0.03, neck, 0.0], [0.0, 0.0, 0.0, 0.6, 0.1]]
    hw, level = np.matmul(np.array(wts, dtype=np.float32), prof[:5])

    # --- torso: rounded soft-tissue body with neck and shoulders ---------------------------
    dxc = pc - cx
    col = np.reciprocal(hw)
    col *= col
    row = dxc * (1.0 / s)
    row *= row
    body = np.dot(col.reshape(sw, 1), row.reshape(1, sw))  # (|x - cx| / half width)^2
    np.subtract(1.0, body, out=body)
    cv2.threshold(body, 0.0, 0.0, cv2.THRESH_TOZERO, dst=body)
    cv2.sqrt(body, dst=body)
    cv2.sqrt(body, dst=body)  # soft-tissue thickness profile, 0 outside the body

    # low-frequency exposure / soft-tissue variation: level * (1 + 0.035 * M N M^T) as one
    # product [level * M N, level] @ [0.035 * M^T; 1]
    m = _smooth_matrix(sw, _LOW_G)
    lhs = np.empty((sw, m.shape[1] + 1), dtype=np.float32)
    np.multiply(m @ noise, level.reshape(sw, 1), out=lhs[:, :-1])
    lhs[:, -1] = level

    # separable additive terms (rows x columns): trachea, spine, heel-effect ramp
    # vertebrae (period and phase snapped to the bank's levels / whole work pixels), and the
    # column profiles of trachea and spine shifted to the work pixel nearest to the midline
    vbank = _vertebra_bank(sw, s)
    q = min(int((spine_p - 0.042) / 0.008 * _VERTEBRA_LEVELS), _VERTEBRA_LEVELS - 1)
    o = round(spine_o * (s * spine_p) / kw)
    prof[7] = vbank[q, o : o + sw]
    cbank = _midline_bank(sw, s)
    j = sw - min(sw - 1, max(0, round(cx / kw - 0.5)))
    a_w = np.matmul(prof[6:9].T, cbank[:, j : j + sw])
    cv2.accumulateProduct(body, lhs @ _low_rhs(sw), a_w)  # attenuation: white = high

    # --- mediastinum + heart (occluder) -----------------------------------------------------
    occ = np.zeros((sw, sw), dtype=np.float32)
    oc0, oc1 = span(cx - 0.16 * s, cx + 0.16 * s)
    # the ramp of max(-hw_l - dx, dx - hw_r(y)) is the min of the two ramps (it is decreasing)
    sc = 1.0 / (2.0 * e)
    knob = prof[9]  # right half width hw_r(y) = hw_r + knob bump + widening, then its ramp
    np.square(knob, out=knob)
    np.negative(knob, out=knob)
    np.exp(knob, out=knob)
    knob *= med.knob * sc
    knob += med.hw_r * sc + 0.5
    cv2.scaleAdd(prof[5], 0.015 * s * sc, knob, dst=knob)
    dxm = dxc[oc0:oc1]
    win = occ[:, oc0:oc1]
    np.subtract(knob.reshape(sw, 1), dxm * sc, out=win)
    np.minimum(win, (dxm + med.hw_l) * sc + 0.5, out=win)
    _clip01(win)
    heart = anat.heart
    c0, c1 = span(*heart.cols(s, 3 * e))
    dia = anat.diaphragm(grid1)
    floor = dia[c0:c1]
    r0, r1 = span(heart.cy - heart.ry - 3 * e, float(floor.max()) + 3 * e)
    hf = heart.f(grid1[:, c0:c1], pc[r0:r1], floor)
    fields["heart"] = (r0, r1, c0, c1, hf)
    win = occ[r0:r1, c0:c1]
    np.maximum(win, _ramp(hf, 2.5 * e), out=win)
    oc0, oc1 = min(oc0, c0), max(oc1, c1)  # occ is 0 outside these columns
    win = a_w[:, oc0:oc1]
    cv2.scaleAdd(occ[:, oc0:oc1], 0.1, win, dst=win)
    # abdomen (liver, stomach) under the diaphragm is as dense as the heart
    r0, r1 = span(float(dia.min()) - 3 * e, s)
    sc = 1.0 / (3.0 * e)
    abd = np.subtract((pc[r0:r1] * sc + 0.5)[:, None], (dia * sc)[None, :])
    _clip01(abd)
    abd *= body[r0:r1]
    win = a_w[r0:r1]
    cv2.scaleAdd(abd, 0.1, win, dst=win)

    # --- lungs (air), vessel gate, effusion, pneumothorax ------------------------------------
    air = np.zeros((sw, sw), dtype=np.float32)
    gate = np.zeros((sw, sw), dtype=np.float32)  # where vascular markings show
    # Both lungs at once (every array has the lung as its first axis) on windows of one shape:
    # the union of their rows, and as many columns as the wider one needs, each window widened
    # away from the midline. The signed distance is the max of four terms that are each a sum
    # of a row and a column profile, so one batched matrix product gives all four.
    windows = []
    for lung in anat.lungs:
        r0, r1, c0, c1 = lung.window(s, 3 * e)
        windows.append((*span(r0, r1), *span(c0, c1)))
    (lr0, lr1, lc0, lc1), (rr0, rr1, rc0, rc1) = windows
    r0, r1 = min(lr0, rr0), max(lr1, rr1)
    nr, nc = r1 - r0, max(lc1 - lc0, rc1 - rc0)
    cols = (max(0, lc1 - nc), min(rc0, sw - nc))
    lg0, lg1 = anat.lungs
    # lung u (0 medial border, 1 lateral wall) of the window columns and v (0 apex, 1
    # costophrenic angle) of its rows; column j of lung k's window is x = pc[j] + cols[k] * kw
    lines = np.array(
        [
            (lg0.side / lg0.w, (cols[0] * kw - lg0.xm) * lg0.side / lg0.w),
            (lg1.side / lg1.w, (cols[1] * kw - lg1.xm) * lg1.side / lg1.w),
            (1.0 / lg0.h, -lg0.yt / lg0.h),
            (1.0 / lg1.h, -lg1.yt / lg1.h),
        ],
        dtype=np.float32,
    )
    uu = np.matmul(lines[:2], grid1[:, :nc])  # [2, nc]
    vv = np.matmul(lines[2:], grid1[:, r0:r1])  # [2, nr]
    f, vc, uc = _lung_sdf(uu, vv, _lung_params(anat.lungs))  # [2, nr, nc]
    ls = _ramp(f.reshape(2 * nr, nc), 1.5 * e).reshape(2, nr, nc)
    # air is thickest mid-lung: lighter towards apex, base, hilum and chest wall
    vprof = np.sin(np.pi * vc)
    np.abs(vprof, out=vprof)
    np.sqrt(vprof, out=vprof)
    vprof *= 0.22
    vprof += 0.78
    uprof = np.sin(np.pi * uc)
    np.abs(uprof, out=uprof)
    np.sqrt(uprof, out=uprof)
    uprof *= 0.4
    uprof += 0.6
    depth = np.multiply(ls, vprof.reshape(2, nr, 1))
    depth *= uprof.reshape(2, 1, nc)
    g = 1.0 - 0.75 * uc
    g = np.multiply(ls, g.reshape(2, 1, nc))
    for k, lung in enumerate(anat.lungs):
        c0, c1 = cols[k], cols[k] + nc
        if k in effusions or k in ptx:
            fields[f"lung{k}"] = (r0, r1, c0, c1, f[k])
        u, v, dk, gk = uu[k], vv[k], depth[k], g[k]
        if k in effusions:
            eff = effusions[k]
            ev = eff.below(lung, u, v)
            fill = ev * (1.0 / (0.025 * lung.h))
            fill += 0.5
            _clip01(fill)
            rim = ev * (0.8 / lung.h)  # 0.8 + 0.2 * clip(ev / (0.25 h), 0, 1)
            cv2.threshold(rim, 0.0, 0.0, cv2.THRESH_TOZERO, dst=rim)
            cv2.threshold(rim, 0.2, 0.0, cv2.THRESH_TRUNC, dst=rim)
            rim += 0.8
            fill *= rim
            np.multiply(fill, -eff.strength, out=rim)
            rim += 1.0
            dk *= rim
            np.subtract(1.0, fill, out=fill)
            gk *= fill
        if k in ptx:
            p = ptx[k]
            fc = p.collapsed_f(lung, u, v)
            fields[f"ptx{k}"] = (r0, r1, c0, c1, fc)
            gap = fc * (1.0 / e)  # ramp of -fc
            gap += 0.5
            _clip01(gap)
            gap *= ls[k]
            cv2.scaleAdd(gap, 0.12 * p.strength, dk, dst=dk)
            np.subtract(1.0, gap, out=gap)
            gk *= gap
            line = np.abs(fc)
            line *= -1.0 / max(0.7, 0.9 * e)
            line += 1.0
            cv2.threshold(line, 0.0, 0.0, cv2.THRESH_TOZERO, dst=line)  # (<= 1 already)
            line *= ls[k]
            win = a_w[r0:r1, c0:c1]
            cv2.scaleAdd(line, 0.16 * p.strength, win, dst=win)
        air[r0:r1, c0:c1] += dk
        gate[r0:r1, c0:c1] += gk
    vis = 1.0 - occ[:, oc0:oc1]  # the occluder hides the lungs behind it
    air[:, oc0:oc1] *= vis
    gate[:, oc0:oc1] *= vis
    cv2.scaleAdd(air, -0.38, a_w, dst=a_w)

    # vascular markings: two trees from the fixed bank, shifted onto this image's hila
    bank, pad = _vessel_bank_f(sw)
    split = min(sw, max(0, int(cx / kw)))
    for (r0, r1, c0, c1), lung, (a, b) in zip(
        windows, anat.lungs, ((0, split), (split, sw)), strict=True
    ):
        var = d.integer(_VESSEL_VARIANTS)
        dx = (cx - 0.5 * s) / kw + d.u(-0.3, 0.3) * pad
        dy = (lung.yt + 0.45 * lung.h - 0.45 * s) / kw + d.u(-0.3, 0.3) * pad
        ox = min(2 * pad, max(0, int(round(pad - dx))))
        oy = min(2 * pad, max(0, int(round(pad - dy))))
        tree = bank[int(d.u() < 0.5), var, oy : oy + sw, ox : ox + sw]
        c0, c1 = max(c0, a), min(c1, b)  # markings only show inside this lung
        if c1 > c0:
            win = a_w[r0:r1, c0:c1]
            cv2.accumulateProduct(gate[r0:r1, c0:c1], tree[r0:r1, c0:c1], win)

    # --- ribs: a rib cage from the fixed bank, shifted onto this thorax ----------------------
    top = min(left.yt, right.yt) - 0.05 * s
    bot = max(left.yt + left.h, right.yt + right.h) + 0.04 * s
    rib_bank, pad = _rib_bank_f(sw)
    var = d.integer(_RIB_VARIANTS)
    ox = min(2 * pad, max(0, round(pad - (cx - 0.5 * s) / kw)))
    oy = min(2 * pad, max(0, round(pad - (top - _RIB_TOP * s) / kw)))
    cage = rib_bank[int(d.u() < 0.5), var, oy : oy + sw, ox : ox + sw]
    r0, r1 = span(top - 0.02 * s, bot + 0.06 * s)
    c0, c1 = span(cx - anat.thorax_half - 0.06 * s, cx + anat.thorax_half + 0.06 * s)
    wgt = air[r0:r1, c0:c1] * 0.9  # ribs show best over the lungs: 0.4 + 0.6 min(1.5 air, 1)
    wgt += 0.4
    cv2.threshold(wgt, 1.0, 0.0, cv2.THRESH_TRUNC, dst=wgt)
    win = a_w[r0:r1, c0:c1]
    cv2.accumulateProduct(wgt, cage[r0:r1, c0:c1], win)

    # clavicles: a fixed stamp placed at the work pixel nearest to (cx, top + U * s)
    stamp, oy, ox = _clavicle_stamp(sw, s)
    i0 = round((top + d.u(0.07, 0.1) * s) / kw - 0.5) - oy
    j0 = round(cx / kw - 0.5) - ox
    a, b = max(0, -i0), min(stamp.shape[0], sw - i0)
    c, f = max(0, -j0), min(stamp.shape[1], sw - j0)
    if b > a and f > c:
        a_w[i0 + a : i0 + b, j0 + c : j0 + f] += stamp[a:b, c:f]

    # gastric bubble under the image-right hemidiaphragm: a stamp from the bank (half axes
    # snapped to its levels), centred on the work pixel nearest to (gx, gy)
    gx = cx + s * d.u(0.12, 0.2)
    gy = right.yt + right.h * (1.0 - right.dd * 0.5) + s * d.u(0.04, 0.07)
    ix, iy = d.integer(_BUBBLE_LEVELS), d.integer(_BUBBLE_LEVELS)
    stamp = _bubble_bank(sw, s)[ix][iy]
    i0 = round(gy / kw - 0.5) - stamp.shape[0] // 2
    j0 = round(gx / kw - 0.5) - stamp.shape[1] // 2
    a, b = max(0, -i0), min(stamp.shape[0], sw - i0)
    c, f = max(0, -j0), min(stamp.shape[1], sw - j0)
    if b > a and f > c:
        win = a_w[i0 + a : i0 + b, j0 + c : j0 + f]
        cv2.scaleAdd(stamp[a:b, c:f], -d.u(0.05, 0.12), win, dst=win)
    return a_w, occ, fields


def _rib_bands(q: np.ndarray, half: float, sharp: float) -> np.ndarray:
    """Periodic soft bands, in place: 1 where ``q`` is within ``half`` of an integer + 0.5."""
    fl = np.floor(q)
    q -= fl
    q -= 0.5
    np.abs(q, out=q)
    q -= half
    q *= -sharp
    q += 0.5
    return _clip01(q)


def _place_focal(
    d: _Draws,
    cls: int,
    anat: _Anatomy,
    occ_w: np.ndarray,
    busy: np.ndarray,
    s: int,
    contrast: float,
    jitter: float,
    a_img: np.ndarray,
    first: bool,
) -> _Lesion | None:
    """Draw a nodule or mass inside a visible lung field, not touching other lesions.

    The lesion is added to ``a_img`` (full resolution), its box plus a 2 px margin is marked in
    ``busy``. Returns ``None`` when no free place was found (only for a class's second lesion or
    later; the first one may overlap a lesion of another class).
    """
    size_j = min(1.8, max(0.55, math.exp(jitter * d.normal())))
    if cls == _NODULE:
        r = max(1.6, s * d.u(0.012, 0.03) * size_j)
        n_h, amp = 0, 0.0
        c = 0.26 * contrast * d.u(0.75, 1.3)
    else:
        r = max(3.0, s * d.u(0.045, 0.095) * size_j)
        n_h, amp = 4, d.u(0.12, 0.28)
        c = 0.26 * contrast * d.u(0.8, 1.2)
    coef = [d.u() * amp / math.sqrt(k + 2) for k in range(n_h)]
    phase = [d.u(0.0, 2.0 * math.pi) for _ in range(n_h)]
    kw = s / occ_w.shape[0]
    pos = None
    for attempt in range(64):
        if attempt and attempt % 16 == 0:
            r = max(1.6, 0.8 * r)  # no room: shrink
        rmax = r * (1.0 + sum(coef))
        margin = rmax + 2.0
        lung = anat.lungs[d.integer(2)]
        x = lung.xm + lung.side * d.u(0.15, 0.9) * lung.w
        y = lung.yt + d.u(0.15, 0.85) * lung.h
        last_resort = attempt == 63 and first  # a class's first lesion always gets a place
        if last_resort:
            x, y = lung.xm + lung.side * 0.55 * lung.w, lung.yt + 0.5 * lung.h
        elif lung.f_point(x, y) > -0.8 * rmax:
            continue
        r0, r1 = max(0, int(y - margin)), min(s, int(math.ceil(y + margin)))
        c0, c1 = max(0, int(x - margin)), min(s, int(math.ceil(x + margin)))
        if not last_resort:
            occ = occ_w[
                int(r0 / kw) : int(math.ceil(r1 / kw)), int(c0 / kw) : int(math.ceil(c1 / kw))
            ]
            if attempt < 40 and occ.max() >= 0.5:
                continue
            if busy[r0:r1, c0:c1].any() and (not first or attempt < 48):
                continue
        pos = (x, y, r0, r1, c0, c1)
        break
    if pos is None:
        return None
    x, y, r0, r1, c0, c1 = pos
    pc = _pixel_centres(s)
    dy = pc[r0:r1] - y
    dx = pc[c0:c1] - x
    dist = np.add((dy * dy)[:, None], (dx * dx)[None, :])
    cv2.sqrt(dist, dst=dist)
    if n_h:
        # radius per direction from a 1-D table over angle bins; the bin of each pixel comes from
        # a per-size table centred on the pixel that holds the lesion centre
        bins, big_r = _angle_bins(s)
        # cos(k t + p) = cos(k t) cos(p) - sin(k t) sin(p)
        wts = [r * ck * math.cos(pk) for ck, pk in zip(coef, phase, strict=True)]
        wts += [-r * ck * math.sin(pk) for ck, pk in zip(coef, phase, strict=True)]
        table = np.matmul(np.array(wts), _HARMONICS)  # n_h == 4
        table += r
        i0, j0 = r0 - int(y) + big_r, c0 - int(x) + big_r
        rad = cv2.LUT(bins[i0 : i0 + r1 - r0, j0 : j0 + c1 - c0], table.astype(np.float32))
        sd = dist - rad  # px, negative inside
        les = _cut(cls, sd < 0, r0, c0)
        dist /= rad
    else:
        sd = dist - r
        les = _trim(cls, sd < 0, r0, c0)
        dist *= 1.0 / r
    if les is None:
        return None
    prof = _ramp(sd, 0.9 if cls == _NODULE else 1.3)
    dist *= dist  # dome profile 0.55 + 0.45 * sqrt(1 - (dist / rad)^2)
    np.subtract(1.0, dist, out=dist)
    cv2.threshold(dist, 0.0, 0.0, cv2.THRESH_TOZERO, dst=dist)
    cv2.sqrt(dist, dst=dist)
    dist *= 0.45
    dist += 0.55
    prof *= dist
    win = a_img[r0:r1, c0:c1]
    cv2.scaleAdd(prof, c, win, dst=win)
    h, w = les.mask.shape
    busy[max(0, les.y0 - 2) : les.y0 + h + 2, max(0, les.x0 - 2) : les.x0 + w + 2] = True
    return les


_TUBE_T = np.linspace(0.0, 1.0, 32)[:, None]  # curve parameter of the tube polylines


def _draw_tube(d: _Draws, anat: _Anatomy, s: int, a_img: np.ndarray) -> tuple[_Lesion | None, str]:
    """A radio-opaque tube (chest drain or NG tube) drawn into ``a_img``; returns its mask."""
    kind = "drain" if d.u() < 0.5 else "ng_tube"
    t = _TUBE_T
    if kind == "drain":
        lung = anat.lungs[d.integer(2)]
        lat = lung.xm + lung.side * lung.w
        ye = lung.yt + lung.h * d.u(0.6, 0.8)
        outside = np.array([lat + lung.side * 0.12 * s, ye + 0.1 * s])
        entry = np.array([lat + lung.side * 0.03 * s, ye])
        ctrl = np.array([lat - lung.side * 0.08 * lung.w, lung.yt + 0.45 * lung.h])
        end = np.array([lung.xm + lung.side * d.u(0.3, 0.6) * lung.w, lung.yt + 0.12 * lung.h])
        seg1 = outside + t[:8] / t[7] * (entry - outside)
        seg2 = (1 - t) ** 2 * entry + 2 * (1 - t) * t * ctrl + t**2 * end
        pts = np.concatenate([seg1, seg2])
    else:
        lung = anat.lungs[1]
        x0 = anat.cx + s * d.u(-0.02, 0.02)
        y_st = lung.yt + lung.h * (1 - lung.dd * 0.5) + s * d.u(0.06, 0.1)
        xs = anat.cx + s * d.u(0.12, 0.2)
        wob = 0.008 * s * np.sin(t * d.u(4, 8) + d.u(0, 6))
        seg1 = np.concatenate([x0 + wob, t * (y_st - 0.04 * s)], axis=1)
        seg2 = np.concatenate(
            [x0 + t * (xs - x0), y_st - 0.04 * s + 0.04 * s * np.sin(t * np.pi * 0.5)], axis=1
        )
        pts = np.concatenate([seg1, seg2])
    thick = max(1, round(s / 128))
    # draw on a canvas covering the curve's bounding box only (clipped to the image)
    pad = thick + 2
    r0, c0 = max(0, int(pts[:, 1].min()) - pad), max(0, int(pts[:, 0].min()) - pad)
    r1, c1 = min(s, int(pts[:, 1].max()) + pad + 1), min(s, int(pts[:, 0].max()) + pad + 1)
    if r1 <= r0 or c1 <= c0:
        return None, kind
    canvas = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
    poly = [np.round((pts - (c0, r0)) * 16).astype(np.int32)[:, None, :]]
    cv2.polylines(canvas, poly, False, 255, thick, cv2.LINE_AA, 4)
    les = _trim(-1, canvas >= 128, r0, c0)
    if les is None:
        return None, kind
    a_img[r0:r1, c0:c1] += canvas * np.float32(0.22 / 255.0)
    return les, kind


_TONE_X = np.linspace(0.0, 1.0, 256)
_TONE_A = 6.0 + 244.0 * _TONE_X  # the tone curve is _TONE_A + bend * _TONE_B
_TONE_B = 244.0 * _TONE_X * (1.0 - _TONE_X)


def _tone(d: _Draws, a_img: np.ndarray) -> np.ndarray:
    """Film tone curve with exposure variation: attenuation ``float32`` -> ``uint8``.

    The attenuation window ``[lo, hi]`` (exposure and contrast per image) maps linearly to
    256 levels, then a per-image quadratic bend (gamma-like) maps them to 6..250 (lookup).
    """
    lo, hi = -0.05 + d.u(-0.04, 0.04), 1.0 + d.u(-0.08, 0.08)
    bend = d.u(-0.35, 0.2) - 0.15  # y = x + bend * x * (1 - x): < 0 darkens the mid-tones
    lut = np.rint(_TONE_B * bend + _TONE_A).astype(np.uint8)  # 6 + 244 (x + bend x (1 - x))
    # |alpha * a + beta| saturated to 0..255: values below `lo` (the black level) fold back
    # into the black noise, which is harmless
    idx = cv2.convertScaleAbs(a_img, alpha=255.0 / (hi - lo), beta=-255.0 * lo / (hi - lo))
    return cv2.LUT(idx, lut)


# ---------------------------------------------------------------------------------------------
# Public rendering API
# ---------------------------------------------------------------------------------------------


def split_stream(split: str) -> int:
    """Seed stream of a split name ("train", "val", "test", "val-loc", "test-loc")."""
    canon = _SPLIT_ALIASES.get(split, split)
    if canon not in _SPLIT_STREAMS:
        allowed = list(_SPLIT_STREAMS) + list(_SPLIT_ALIASES)
        raise DataError(f"phantom: unknown split {split!r}; allowed: {allowed}")
    return _SPLIT_STREAMS[canon]


def render_phantom(spec: PhantomSpec, stream: int, index: int) -> PhantomItem:
    """Render one phantom chest film.

    Args:
        spec: what to render.
        stream: seed stream (non-negative int); the dataset uses 0 train, 1 val, 2 test.
        index: item index within the stream (non-negative int).

    Returns:
        A :class:`PhantomItem`: image ``uint8 [H, W]``, labels ``float32 [5]``, boxes
        ``float32 [N, 5]`` (class, x0, y0, x1, y1; continuous pixel coordinates, tight box of the
        mask), masks ``bool [5, H, W]`` and meta (confounder drawn, its kind, box and mask).
    """
    stream = _check_int("stream", stream, 0)
    index = _check_int("index", index, 0)
    c = _render(spec, stream, index)
    s = spec.image_size
    masks = np.zeros((len(PHANTOM_CLASSES), s, s), dtype=bool)
    for les in c.lesions:
        h, w = les.mask.shape
        masks[les.cls, les.y0 : les.y0 + h, les.x0 : les.x0 + w] |= les.mask
    return PhantomItem(
        image=c.image, labels=c.labels(), boxes=c.boxes(), masks=masks, meta=c.meta()
    )


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


class PhantomDataset(torch.utils.data.Dataset):
    """The synthetic chest-film dataset (no files; every item rendered from the seed).

    Args:
        split: "train", "val", "test", or the aliases "val-loc" / "test-loc" (the phantom has
            boxes on every split).
        image_size: side of the square images, 64..1024.
        classes: optional subset of :data:`PHANTOM_CLASSES`, in the order wanted; selects and
            reorders the target entries, mask planes and box class indices. Images still show
            all lesion classes.
        num_train, num_val, num_test: split sizes.
        seed: non-negative integer.
        prevalence, difficulty, confounder_class, confounder_prob, confounder_base_rate: see
            :class:`PhantomSpec`.
        cache_in_memory: keep rendered items (images and trimmed masks) after first access.

    Items are :class:`~lesionsweep.data.types.Sample`: image ``uint8 [1, H, W]``, target
    ``float32 [K]``, boxes ``float32 [N, 5]`` (class index into ``classes``, x0, y0, x1, y1),
    masks ``bool [K, H, W]``, id ``phantom-<split>-<index:06d>``, ``confounder`` (the tube's
    mask ``bool [H, W]``, empty without a tube, when ``confounder_class`` is set; else None;
    ``info.confounder_class`` names it when that class is selected) and meta (see
    :class:`PhantomItem`; ``confounder_mask`` is a bool tensor ``[H, W]`` or None).

    Raises:
        TypeError: unknown keyword arguments (all named, with the allowed ones).
        DataError: a bad value (names the option and what is allowed).
    """

    _OPTIONS = (
        "split", "image_size", "classes", "num_train", "num_val", "num_test", "seed",
        "prevalence", "difficulty", "confounder_class", "confounder_prob",
        "confounder_base_rate", "cache_in_memory",
    )  # fmt: skip

    def __init__(
        self,
        split: str = "train",
        image_size: int = 128,
        classes: Iterable[str] | None = None,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        seed: int = 0,
        prevalence: float | Mapping[str, float] = 0.3,
        difficulty: float = 0.3,
        confounder_class: str | None = None,
        confounder_prob: float = 0.9,
        confounder_base_rate: float = 0.05,
        cache_in_memory: bool = True,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise TypeError(
                f"PhantomDataset got unknown option(s) {sorted(unknown)}; "
                f"allowed: {list(self._OPTIONS)}"
            )
        self.stream = split_stream(split)
        self.split = _SPLIT_ALIASES.get(split, split)
        self.spec = PhantomSpec(
            image_size=image_size,
            prevalence=prevalence,
            difficulty=difficulty,
            confounder_class=confounder_class,
            confounder_prob=confounder_prob,
            confounder_base_rate=confounder_base_rate,
            seed=seed,
        )
        sizes = {
            "train": _check_int("num_train", num_train, 0),
            "val": _check_int("num_val", num_val, 0),
            "test": _check_int("num_test", num_test, 0),
        }
        self.length = sizes[self.split]
        if classes is None:
            names = PHANTOM_CLASSES
        else:
            if isinstance(classes, str):
                raise DataError(f"phantom: classes must be a list of names, got {classes!r}")
            names = tuple(classes)
            bad = [c for c in names if c not in PHANTOM_CLASSES]
            if bad:
                raise DataError(f"phantom: unknown classes {bad}; allowed: {list(PHANTOM_CLASSES)}")
            if not names or len(set(names)) != len(names):
                raise DataError(f"phantom: classes must be non-empty and unique, got {names}")
        self.classes = names
        # index into ``classes`` of each phantom class, -1 where not selected
        self._remap = tuple(names.index(c) if c in names else -1 for c in PHANTOM_CLASSES)
        # rendered lesions come sorted by class; a subset in the original order keeps that
        self._ordered = list(names) == sorted(names, key=PHANTOM_CLASSES.index)
        self.info = DatasetInfo(
            name="phantom",
            classes=names,
            has_boxes=True,
            has_masks=True,
            image_size=self.spec.image_size,
            confounder_class=confounder_class if confounder_class in names else None,
        )
        self.cache_in_memory = bool(cache_in_memory)
        self._cache: dict[int, _Compact] = {}

    def __len__(self) -> int:
        return self.length

    def _compact(self, index: int) -> _Compact:
        item = self._cache.get(index)
        if item is None:
            item = _render(self.spec, self.stream, index)
            if self.cache_in_memory:
                self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> Sample:
        if type(index) is not int and (
            isinstance(index, bool) or not isinstance(index, numbers.Integral)
        ):
            raise TypeError(f"PhantomDataset index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"phantom {self.split} index {index} out of range({self.length})")
        c = self._compact(i)
        s = self.spec.image_size
        k = len(self.classes)
        target = np.zeros(k, dtype=np.float32)
        masks = np.zeros((k, s, s), dtype=bool)
        rows = []
        for les in c.lesions:
            j = self._remap[les.cls]
            if j < 0:
                continue
            target[j] = 1.0
            h, w = les.mask.shape
            masks[j, les.y0 : les.y0 + h, les.x0 : les.x0 + w] |= les.mask
            rows.append((j, *les.box))
        boxes = np.array(rows, dtype=np.float32).reshape(-1, 5)
        if len(rows) > 1 and not self._ordered:  # a reordering class subset: sort by class
            boxes = boxes[np.argsort(boxes[:, 0], kind="stable")]
        meta = c.meta(as_torch=True)
        meta["split"] = self.split
        tube = None  # with a confounder configured: the tube's mask, empty when none was drawn
        if self.spec.confounder_class is not None:
            tube = meta["confounder_mask"]
            if tube is None:
                tube = torch.zeros((s, s), dtype=torch.bool)
        return Sample(
            image=torch.from_numpy(c.image.reshape(1, s, s)),
            target=torch.from_numpy(target),
            boxes=torch.from_numpy(boxes),
            masks=torch.from_numpy(masks),
            id=f"phantom-{self.split}-{i:06d}",
            meta=meta,
            confounder=tube,
        )


# ---------------------------------------------------------------------------------------------
# Preview
# ---------------------------------------------------------------------------------------------

_PREVIEW_COLORS = ((255, 80, 80), (255, 190, 40), (80, 200, 255), (90, 230, 90), (220, 110, 255))


def save_preview(
    path: str | Path,
    n: int = 8,
    image_size: int = 256,
    seed: int = 0,
    *,
    prevalence: float | Mapping[str, float] = 0.4,
    difficulty: float = 0.3,
    confounder_class: str | None = "effusion",
) -> Path:
    """Write a PNG grid of ``n`` training phantoms with their lesion boxes drawn.

    Boxes are coloured by class (legend at the bottom); the confounder tube's box, where one was
    drawn, is dashed white. Returns the path written.
    """
    from PIL import Image, ImageDraw

    n = _check_int("n", n, 1, 64)
    spec = PhantomSpec(
        image_size=image_size,
        prevalence=prevalence,
        difficulty=difficulty,
        confounder_class=confounder_class,
        seed=seed,
    )
    cols = min(n, 4)
    rows = -(-n // cols)
    gap, legend = 4, 18
    s = spec.image_size
    sheet = Image.new(
        "RGB", (cols * (s + gap) + gap, rows * (s + gap) + gap + legend), (20, 20, 20)
    )
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        item = render_phantom(spec, 0, i)
        ox, oy = gap + (i % cols) * (s + gap), gap + (i // cols) * (s + gap)
        sheet.paste(Image.fromarray(item.image).convert("RGB"), (ox, oy))
        for cls, x0, y0, x1, y1 in item.boxes.tolist():
            draw.rectangle(
                (ox + x0, oy + y0, ox + x1 - 1, oy + y1 - 1),
                outline=_PREVIEW_COLORS[int(cls)],
                width=max(1, s // 200),
            )
        tb = item.meta["confounder_box"]
        if tb is not None:
            x0, y0, x1, y1 = tb
            for t0 in range(int(x0), int(x1), 6):
                draw.line((ox + t0, oy + y0, ox + min(t0 + 3, x1), oy + y0), fill=(255, 255, 255))
                draw.line((ox + t0, oy + y1, ox + min(t0 + 3, x1), oy + y1), fill=(255, 255, 255))
    x = gap
    y = sheet.height - legend + 3
    for name, col in zip(PHANTOM_CLASSES, _PREVIEW_COLORS, strict=True):
        draw.rectangle((x, y + 2, x + 10, y + 12), outline=col, width=2)
        draw.text((x + 14, y), name, fill=col)
        x += 14 + 7 * len(name) + 12
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
