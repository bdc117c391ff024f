"""Texture banks shared by every render at one size (grain, vessels, ribs, clavicles, vertebrae),
work-resolution grids and fields, and the array helpers the renderer uses."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from .spec import MIN_IMAGE_SIZE

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
