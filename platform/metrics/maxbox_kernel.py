"""MaxBoxAccV2's correct counts for a batch of score maps in one compiled call.

Per map: ``uint8(map * 255)`` as wsolevaluation computes it, the thresholds ``int(tau * max)``
collapsed to the distinct binary images, the boxes of every contour at every level from
:mod:`.levelsets` (one pass over the rows for all levels), and the best "+1" IoU over
(boxes x GT) per level. Compiled with numba (``cache=True``), imported only when MaxBoxAccV2
runs with ``multi_contour_eval``.
"""

from __future__ import annotations

import numba
import numpy as np

from .levelsets import _components, _node_box, _scratch

__all__ = ["maxbox_counts"]

#: the value histogram is sampled on every this-many-th row (see :func:`_levels`)
_SAMPLE_ROWS = 8


@numba.njit(cache=True, nogil=True)
def _quantise(m, image, present):
    """``image = uint8(m * 255)`` (numpy's truncation) and its maximum, a vectorised pass per
    row, and ``present[v] = 1`` for the values ``v`` of every ``_SAMPLE_ROWS``-th row (see
    :func:`_levels`).
    Returns ``(ok, max)``; ``ok`` is False if a value is NaN or outside [0, 1] (``image`` is
    then garbage)."""
    ok = True
    mx = 0
    for y in range(m.shape[0]):
        src = m[y]
        dst = image[y]
        for x in range(src.shape[0]):
            v = src[x]
            ok &= (v >= 0.0) & (v <= 1.0)
            u = np.uint8(v * 255) if (v >= 0.0) & (v <= 1.0) else np.uint8(0)
            dst[x] = u
            mx = max(mx, int(u))
        if y % _SAMPLE_ROWS == 0:
            for x in range(dst.shape[0]):  # the row is still in L1
                present[dst[x]] = 1
    return ok, mx


@numba.njit(cache=True, nogil=True)
def _group(taus, mx, present, levels, inverse) -> int:
    """Thresholds ``int(tau * mx)`` with the same binary image (no value of ``present`` from
    one to the next) share one level: ``levels[:n]`` their thresholds, ``inverse[t]`` the level
    of tau ``t``. Turns ``present`` into its running count. Returns ``n``."""
    for v in range(1, 256):
        present[v] += present[v - 1]  # number of values <= v that occur
    n_lv = 0
    last_key = -1
    for t in range(taus.shape[0]):
        thr = int(taus[t] * mx)
        key = present[min(thr, 255)]
        if key != last_key:
            levels[n_lv] = thr
            n_lv += 1
            last_key = key
        inverse[t] = n_lv - 1
    return n_lv


@numba.njit(cache=True, nogil=True)
def _levels(image, mx, present, taus, levels, inverse) -> int:
    """The levels of :func:`_group` from the values of a sample of rows (``present``, with
    ``mx``): exact when every two distinct thresholds have a sampled value between them (the
    whole image can only split the same groups); otherwise from every pixel. Returns ``n``."""
    present[mx] = 1
    n_lv = _group(taus, mx, present, levels, inverse)
    n_thr = 0
    last = -1
    for t in range(taus.shape[0]):
        thr = int(taus[t] * mx)
        n_thr += thr != last
        last = thr
    if n_lv == n_thr:
        return n_lv
    present[:] = 0
    for y in range(image.shape[0]):
        row = image[y]
        for x in range(row.shape[0]):
            present[row[x]] = 1
    return _group(taus, mx, present, levels, inverse)


@numba.njit(cache=True, nogil=True)
def _maxbox_counts(maps, images, gt, gt_off, taus, deltas, num_correct) -> int:
    quantised = images.shape[0] > 0
    n, height, width = images.shape if quantised else maps.shape
    n_tau = taus.shape[0]
    image = np.empty((height, width), np.uint8)  # rebound to images[i] when quantised
    ev, cnt, R, nd = _scratch(width, min(n_tau, 256))  # <= 256 distinct thresholds
    correct = np.zeros(num_correct.shape, np.int64)
    levels = np.empty(n_tau, np.int64)
    inverse = np.empty(n_tau, np.int64)
    best = np.empty(n_tau, np.float64)
    lut = np.empty(256, np.int32)
    for i in range(n):
        # uint8(map * 255) as numpy truncates it, its maximum and the values of sampled rows
        present = np.zeros(256, np.int64)
        if quantised:
            image = images[i]
            mx = 0
            for y in range(height):
                row = image[y]
                for x in range(width):
                    mx = max(mx, row[x])
                if y % _SAMPLE_ROWS == 0:
                    for x in range(width):
                        present[row[x]] = 1
        else:
            ok, mx = _quantise(maps[i], image, present)
            if not ok:
                return 1
        # thresholds int(tau * max) with the same binary image share one level
        n_lv = _levels(image, int(mx), present, taus, levels, inverse)
        k = 0
        for v in range(256):  # lut[v]: number of levels below v (foreground at k iff q > k)
            while k < n_lv and levels[k] < v:
                k += 1
            lut[v] = k
        nd, n_nd = _components(image, lut, ev, cnt, R, nd)
        # best IoU ("+1" convention, as calculate_multiple_iou) per level over boxes x GT
        g0 = gt_off[i]
        g1 = gt_off[i + 1]
        for k in range(n_lv):
            best[k] = -1.0
            if levels[k] >= mx:  # no foreground: wsolevaluation's box [0, 0, 0, 0]
                best[k] = _best_iou(0, 0, 0, 0, gt, g0, g1)
        for r in range(n_nd):
            has, x0, y0, x1, y1 = _node_box(nd, r, width, height)
            if has:
                iou = _best_iou(x0, y0, x1, y1, gt, g0, g1)
                if iou > best[nd[r, 5]]:
                    best[nd[r, 5]] = iou
        for t in range(n_tau):
            b = best[inverse[t]]
            for d in range(deltas.shape[0]):
                if b >= deltas[d]:
                    correct[d, t] += 1
    num_correct += correct
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _best_iou(a0, a1, a2, a3, gt, g0, g1) -> float:
    best = -1.0
    area_a = (a2 - a0 + 1) * (a3 - a1 + 1)
    for g in range(g0, g1):
        iw = max(0, min(a2, gt[g, 2]) - max(a0, gt[g, 0]) + 1)
        ih = max(0, min(a3, gt[g, 3]) - max(a1, gt[g, 1]) + 1)
        inter = iw * ih
        union = area_a + (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1) - inter
        iou = inter / union if union > 0 else 0.0
        if iou > best:
            best = iou
    return best


def maxbox_counts(
    maps: np.ndarray,
    images: np.ndarray,
    gt: np.ndarray,
    gt_off: np.ndarray,
    thresholds: np.ndarray,
    deltas: np.ndarray,
    num_correct: np.ndarray,
) -> bool:
    """MaxBoxAccV2's correct counts for a batch of maps, in one compiled call.

    Per map: ``uint8(map * 255)``; the thresholds ``int(tau * max)`` collapsed to the distinct
    binary images; the boxes of every contour of every level (:mod:`.levelsets`); the best
    "+1" IoU over (boxes x GT) per level (the box ``[0, 0, 0, 0]`` where nothing is foreground);
    then ``num_correct[d, t] += best(tau_t) >= deltas[d]``.

    Args:
        maps: float64 ``[N, H, W]``, values in [0, 1] (or ``[0, 1, 1]`` if ``images`` is given).
        images: uint8 ``[N, H, W]``, the maps already quantised (or ``[0, 1, 1]``: quantise
            ``maps`` here, fused with the range check).
        gt: int64 ``[G, 4]`` GT boxes ``(x0, y0, x1, y1)`` (wsolevaluation's integer form) of all
            maps; map ``i`` owns ``gt[gt_off[i]:gt_off[i + 1]]`` (at least one).
        gt_off: int64 ``[N + 1]``. thresholds: float64 ``[T]`` taus. deltas: float64 ``[D]``.
        num_correct: int64 ``[D, T]``, added to in place (only if every map is valid).

    Returns:
        False if a value is NaN or outside [0, 1] (then nothing is added), else True.
    """
    return _maxbox_counts(maps, images, gt, gt_off, thresholds, deltas, num_correct) == 0
