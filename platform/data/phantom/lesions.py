"""Focal lesions (nodule, mass) and the confounder tube drawn into a film."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import _Anatomy, _cut, _Draws, _trim
from .banks import _HARMONICS, _angle_bins, _pixel_centres, _ramp
from .spec import _NODULE, _Lesion


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
