"""Random anatomy of one film: lungs, heart, mediastinum, effusion and pneumothorax geometry."""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .banks import _SDF_PATTERN, _c01, _clip01
from .spec import _Lesion


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
    key = _SeedKey(f"{seed}/{stream}/{index}".encode())
    return np.random.Generator(np.random.PCG64(key))  # type: ignore[arg-type]  # an ISeedSequence


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
