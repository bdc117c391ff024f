"""Compiled kernels for PxAP's histograms and the NIH boxes and tallies.

Each kernel takes a whole batch of maps in one call (no per-map Python or OpenCV call) and makes
few passes over the pixels, branch-free (vectorised) where it can: PxAP bins a chunk of pixels
in one SIMD pass and counts them in a second over the chunk's indices; NIH takes each map's
range in one pass, codes all its levels' binarisations into one uint8 image in a second, then
finds each level's components on that image. The arithmetic is the evaluators' own, operation
for operation (same IEEE roundings), so the results are bitwise those of :mod:`.reference`;
equality is tested in ``tests/unit/test_metrics_fast_equals_reference.py``.

Compiled with numba (``cache=True``: the first call on a machine compiles for a few seconds).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["pxap_histograms", "pxap_histograms_grid", "nih_tallies"]


@numba.njit(cache=True, nogil=True)
def pxap_histograms(maps, gt, ignore, edges, inv_step, hist_false, hist_true) -> int:
    """Add every pixel to the GT-negative or GT-positive histogram of its bin.

    A pixel's bin is ``searchsorted(edges, v, "right") - 1`` (the largest ``k`` with
    ``edges[k] <= v``): ``floor(v * inv_step)`` corrected by exact comparisons with the edges.

    Args:
        maps: float64 ``[P]`` (flattened maps). gt: uint8 ``[P]`` (1 = GT-positive).
        ignore: uint8 ``[P]`` (1 = left out) or ``[0]`` for none.
        edges: float64 ``[B + 1]`` ascending bin edges, ``edges[0] = 0``.
        inv_step: ``1 / cam_curve_interval``.
        hist_false, hist_true: float64 ``[B]``, added to in place.

    Returns:
        0, or 1 if a value is NaN or outside [0, 1] (then nothing is added).
    """
    n = maps.shape[0]
    n_bins = hist_false.shape[0]
    use_ignore = ignore.shape[0] == n
    counts = np.zeros(2 * n_bins, np.int64)  # [2 * bin + (GT-positive)], no branch on gt
    for i in range(n):
        v = maps[i]
        if not (v >= 0.0 and v <= 1.0):
            return 1  # before anything is added
        if use_ignore and ignore[i] != 0:
            continue
        k = min(int(v * inv_step), n_bins - 1)
        while edges[k + 1] <= v:
            k += 1
        while edges[k] > v:
            k -= 1
        counts[2 * k + (gt[i] != 0)] += 1
    for k in range(n_bins):
        hist_false[k] += counts[2 * k]
        hist_true[k] += counts[2 * k + 1]
    return 0


_CHUNK = 4096  # pixels binned (vectorised) before they are counted: the indices stay in L1


@numba.njit(cache=True, nogil=True, inline="always")
def _grid_bins(maps, gt, step, inv_step, n_grid, idx) -> bool:
    """``idx[i] = 2 * bin(maps[i]) + gt[i]`` over one chunk, branch-free (SIMD); True if a value
    is NaN or outside [0, 1] (its index is then garbage and must not be used).

    The edges are ``fl(k * step)`` for ``k < n_grid`` (``np.arange(0, 1, step)``), then 1, 2, 3.
    ``x = fl(v * fl(1 / step))`` is within a relative ``4 * 2**-53`` of ``v / step`` and each
    edge within ``2**-53`` of ``k * step``, so ``floor(x)`` is the bin or one off it (for fewer
    than 2**29 edges, int32 here); one step up and one step down, each an exact comparison with
    the edge recomputed as numpy computed it, give the bin.
    """
    bad = False
    one = np.int32(1)
    top = np.int32(n_grid - 1)  # int32 lanes: twice as many per vector as int64
    for i in range(maps.shape[0]):
        v = maps[i]
        bad |= (v < 0.0) | (v > 1.0) | (v != v)
        k = min(np.int32(v * inv_step), top)
        up = 1.0 if k == top else (k + one) * step
        k = k + one if up <= v else k
        lo = 1.0 if k == top + one else k * step
        k = k - one if lo > v else k
        idx[i] = np.int32(2) * k + np.int32(gt[i])
    return bad


@numba.njit(cache=True, nogil=True)
def pxap_histograms_grid(maps, gt, ignore, step, inv_step, n_grid, hist_false, hist_true) -> int:
    """:func:`pxap_histograms` for the edges ``np.append(np.arange(0, 1, step), [1, 2, 3])``.

    Per chunk of pixels: the bins in a vectorised pass without lookups (see
    :func:`_grid_bins`), then counted into four interleaved histograms (so that runs of equal
    bins, the common case on smooth maps, do not chain their increments).

    Args:
        maps: float64 ``[P]``. gt: uint8 ``[P]`` of 0/1 (a bool array's view; 1 = GT-positive).
        ignore: uint8 ``[P]`` (1 = left out) or ``[0]`` for none.
        step: ``cam_curve_interval``. inv_step: ``1 / step``.
        n_grid: ``len(np.arange(0, 1, step))`` (< 2**29); the caller checks that the edges
            are those.
        hist_false, hist_true: float64 ``[n_grid + 2]``, added to in place.

    Returns:
        0, or 1 if a value is NaN or outside [0, 1] (then nothing is added).
    """
    n = maps.shape[0]
    n_bins = hist_false.shape[0]
    use_ignore = ignore.shape[0] == n
    w = 2 * n_bins + 1  # [2 * bin + gt]; slot 2 * n_bins takes ignored pixels
    counts = np.zeros(4 * w, np.int64)
    idx = np.empty(_CHUNK, np.int32)
    for s in range(0, n, _CHUNK):
        e = min(s + _CHUNK, n)
        m = e - s
        if _grid_bins(maps[s:e], gt[s:e], step, inv_step, n_grid, idx[:m]):
            return 1  # before anything is added
        if use_ignore:
            ign = ignore[s:e]
            for i in range(m):
                if ign[i] != 0:
                    idx[i] = 2 * n_bins
        m4 = m - m % 4
        for i in range(0, m4, 4):
            counts[idx[i]] += 1
            counts[w + idx[i + 1]] += 1
            counts[2 * w + idx[i + 2]] += 1
            counts[3 * w + idx[i + 3]] += 1
        for i in range(m4, m):
            counts[idx[i]] += 1
    for k in range(n_bins):
        f = 0
        t = 0
        for u in range(4):
            f += counts[u * w + 2 * k]
            t += counts[u * w + 2 * k + 1]
        hist_false[k] += f
        hist_true[k] += t
    return 0


@numba.njit(cache=True, nogil=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _finite_range(m):
    """``(all finite, min, max)`` of a float64 ``[H, W]`` map in one vectorised pass (the order
    of the min/max reductions is free; NaN/inf are still seen: no ``nnan``/``ninf``)."""
    height, width = m.shape
    lo = np.inf
    hi = -np.inf
    finite = True
    for y in range(height):
        src = m[y]
        for x in range(width):
            v = src[x]
            finite &= (v > -np.inf) & (v < np.inf)
            lo = min(lo, v)
            hi = max(hi, v)
    return finite, lo, hi


@numba.njit(cache=True, nogil=True)
def _level_codes(m, lo, scale, constant, levels, code, row, row_bits):
    """``code[y, x]``: bit ``l`` set iff the normalised value ``(m[y, x] - lo) * scale`` (0 on a
    constant map, as :func:`.nih.normalize_to_255`) is ``> levels[l]``, ``l < 8``; vectorised.
    ``row_bits[y]``: the OR of row ``y``'s codes (a level without foreground in a row skips it).
    """
    height, width = m.shape
    for y in range(height):
        src = m[y]
        dst = code[y]
        if constant:
            row[:] = 0.0
        else:
            for x in range(width):
                row[x] = (src[x] - lo) * scale
        for x in range(width):
            dst[x] = 0
        for li in range(levels.shape[0]):
            lv = levels[li]
            bit = np.uint8(1 << li)
            for x in range(width):
                dst[x] |= bit if row[x] > lv else np.uint8(0)
        acc = np.uint8(0)
        for x in range(width):
            acc |= dst[x]
        row_bits[y] = acc


@numba.njit(cache=True, nogil=True)
def _component_boxes(
    code, words, width, row_bits, bit, parent, bx0, by0, bx1, by1, rs, re, rl, out
):
    """Boxes of the 8-connected components of ``code >> bit & 1`` (run union-find).

    ``code`` is ``[H, W8]`` uint8 (``W8`` a multiple of 8, zeros past ``width``) and ``words``
    the same memory as uint64 ``[H, W8 / 8]``: eight pixels without (or all with) the bit are
    passed in one step. Writes continuous boxes ``(x0, y0, x1 + 1, y1 + 1)`` into ``out`` and
    returns their number. ``parent, bx0..by1`` hold one entry per run; ``rs, re, rl`` two rows
    of runs.
    """
    height = code.shape[0]
    ones = np.uint64(0x0101010101010101) << np.uint64(bit)  # the bit in each byte of a word
    n_runs = 0
    prev_lo = 0  # runs of the previous row are rs/re/rl[prev_lo:prev_hi]
    prev_hi = 0
    half = rs.shape[0] // 2
    for y in range(height):
        cur_lo = half if prev_lo == 0 else 0
        cur = cur_lo
        x = 0 if (row_bits[y] >> bit) & 1 else width  # no foreground in the row: no runs
        crow = code[y]
        wrow = words[y]
        while x < width:
            if x % 8 == 0 and wrow[x // 8] & ones == 0:
                x += 8
                continue
            if (crow[x] >> bit) & 1:
                s = x
                x += 1
                while x < width:
                    if x % 8 == 0 and wrow[x // 8] & ones == ones:
                        x += 8
                    elif (crow[x] >> bit) & 1:
                        x += 1
                    else:
                        break
                x = min(x, width)
                rs[cur] = s
                re[cur] = x - 1
                rl[cur] = n_runs
                parent[n_runs] = n_runs
                bx0[n_runs] = s
                bx1[n_runs] = x - 1
                by0[n_runs] = y
                by1[n_runs] = y
                n_runs += 1
                cur += 1
            else:
                x += 1
        # join with the previous row's runs (8-connectivity: columns within 1)
        i = prev_lo
        j = cur_lo
        while i < prev_hi and j < cur:
            if re[i] + 1 < rs[j]:
                i += 1
            elif re[j] + 1 < rs[i]:
                j += 1
            else:
                a = _find(parent, rl[i])
                b = _find(parent, rl[j])
                if a != b:
                    if b < a:
                        a, b = b, a
                    parent[b] = a
                    bx0[a] = min(bx0[a], bx0[b])
                    bx1[a] = max(bx1[a], bx1[b])
                    by0[a] = min(by0[a], by0[b])
                    by1[a] = max(by1[a], by1[b])
                if re[i] < re[j]:
                    i += 1
                else:
                    j += 1
        prev_lo = cur_lo
        prev_hi = cur
    n = 0
    for r in range(n_runs):
        if parent[r] == r:
            out[n, 0] = bx0[r]
            out[n, 1] = by0[r]
            out[n, 2] = bx1[r] + 1
            out[n, 3] = by1[r] + 1
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _score(pred, n_pred, gt, t_iobb, t_iou, best_iobb_gt, best_iou_gt, best_iobb_pred):
    """IoU / IoBB of ``pred[:n_pred]`` x ``gt`` exactly as :func:`.nih.box_iou_iobb`; keeps the
    best IoBB and IoU per GT box (max with the arrays' values) and the best IoBB per box."""
    for p in range(n_pred):
        px0, py0, px1, py1 = pred[p, 0], pred[p, 1], pred[p, 2], pred[p, 3]
        area_p = max(px1 - px0, 0.0) * max(py1 - py0, 0.0)
        best = -1.0
        for g in range(gt.shape[0]):
            gx0, gy0, gx1, gy1 = gt[g, 0], gt[g, 1], gt[g, 2], gt[g, 3]
            iw = max(min(px1, gx1) - max(px0, gx0), 0.0)
            ih = max(min(py1, gy1) - max(py0, gy0), 0.0)
            inter = iw * ih
            area_g = max(gx1 - gx0, 0.0) * max(gy1 - gy0, 0.0)
            union = area_p + area_g - inter
            iou = inter / union if union > 0 else 0.0
            iobb = inter / area_p if area_p > 0 else 0.0
            best_iobb_gt[g] = max(best_iobb_gt[g], iobb)
            best_iou_gt[g] = max(best_iou_gt[g], iou)
            best = max(best, iobb)
        best_iobb_pred[p] = best


@numba.njit(cache=True, nogil=True)
def _tally(
    n_gt,
    n_pred,
    best_iobb_gt,
    best_iou_gt,
    best_iobb_pred,
    keep,
    t_iobb,
    t_iou,
    found_iobb,
    found_iou,
    fp_iobb,
    fp_any,
):
    """One (map, box set) row of :class:`.nih._Tally` counts (nothing when no box)."""
    if n_pred == 0:
        return
    for g in range(n_gt):
        for t in range(t_iobb.shape[0]):
            if best_iobb_gt[g] > t_iobb[t]:
                found_iobb[t] += 1
        for t in range(t_iou.shape[0]):
            if best_iou_gt[g] > t_iou[t]:
                found_iou[t] += 1
    for p in range(n_pred):
        if not keep[p]:
            continue
        for t in range(t_iobb.shape[0]):
            if best_iobb_pred[p] <= t_iobb[t]:
                fp_iobb[t] += 1
        if best_iobb_pred[p] <= 0:
            fp_any[0] += 1


@numba.njit(cache=True, nogil=True)
def nih_tallies(maps, levels, gt, gt_off, t_iobb, t_iou):
    """Wang's boxes and their per-map counts for a batch of maps, one compiled call.

    Per map: min-max to [0, 255] as :func:`.nih.normalize_to_255` (``(v - lo) * (255 / rng)``,
    constant maps all 0), binarised ``> level`` at each level (8 levels per pass, as the bits of
    a uint8 code image), 8-connected components' boxes (continuous, exclusive ends), then the
    counts of :class:`.nih._Tally` for each level and for the union of the levels' boxes (exact
    duplicates counted once).

    Args:
        maps: float64 ``[N, H, W]``. levels: float64 ``[L]``.
        gt: float64 ``[G, 4]`` GT boxes of all maps; map ``i`` owns ``gt[gt_off[i]:gt_off[i+1]]``.
        t_iobb: float64 ``[A]``. t_iou: float64 ``[B]``.

    Returns:
        ``(status, found_iobb [N, L+1, A], found_iou [N, L+1, B], fp_iobb [N, L+1, A],
        fp_any [N, L+1])`` int64, set ``L`` being the union; status 1 if a map has NaN/inf
        (then the counts are not filled).
    """
    n, height, width = maps.shape
    n_lv = levels.shape[0]
    a_n = t_iobb.shape[0]
    b_n = t_iou.shape[0]
    found_iobb = np.zeros((n, n_lv + 1, a_n), np.int64)
    found_iou = np.zeros((n, n_lv + 1, b_n), np.int64)
    fp_iobb = np.zeros((n, n_lv + 1, a_n), np.int64)
    fp_any = np.zeros((n, n_lv + 1), np.int64)
    cap = height * ((width + 1) // 2) + 1  # at most this many runs (and components)
    parent = np.empty(cap, np.int64)
    bx0 = np.empty(cap, np.int64)
    by0 = np.empty(cap, np.int64)
    bx1 = np.empty(cap, np.int64)
    by1 = np.empty(cap, np.int64)
    rw = 2 * ((width + 1) // 2 + 1)
    rs = np.empty(rw, np.int64)
    re = np.empty(rw, np.int64)
    rl = np.empty(rw, np.int64)
    boxes = np.empty((n_lv * cap, 4), np.float64)
    best_pred = np.empty(n_lv * cap, np.float64)
    keep = np.ones(n_lv * cap, np.bool_)
    words = np.zeros((height, (width + 7) // 8), np.uint64)  # zero past the width
    code = words.view(np.uint8)
    row = np.empty(width, np.float64)
    row_bits = np.empty(height, np.uint8)
    for i in range(n):
        m = maps[i]
        finite, lo, hi = _finite_range(m)
        if not finite:
            return 1, found_iobb, found_iou, fp_iobb, fp_any
        g = gt[gt_off[i] : gt_off[i + 1]]
        n_gt = g.shape[0]
        bi_u = np.full(n_gt, -1.0)
        bo_u = np.full(n_gt, -1.0)
        rng = hi - lo
        scale = 255.0 / rng if rng != 0 else 0.0
        total = 0
        for li in range(n_lv):
            if li % 8 == 0:  # one pass: bit l of code[y, x] is (v - lo) * scale > levels[li + l]
                _level_codes(m, lo, scale, rng == 0, levels[li : li + 8], code, row, row_bits)
            cnt = _component_boxes(
                code,
                words,
                width,
                row_bits,
                li % 8,
                parent,
                bx0,
                by0,
                bx1,
                by1,
                rs,
                re,
                rl,
                boxes[total:],
            )
            bi = np.full(n_gt, -1.0)
            bo = np.full(n_gt, -1.0)
            _score(boxes[total:], cnt, g, t_iobb, t_iou, bi, bo, best_pred[total:])
            keep[total : total + cnt] = True
            _tally(
                n_gt,
                cnt,
                bi,
                bo,
                best_pred[total:],
                keep[total:],
                t_iobb,
                t_iou,
                found_iobb[i, li],
                found_iou[i, li],
                fp_iobb[i, li],
                fp_any[i, li:],
            )
            for k in range(n_gt):
                bi_u[k] = max(bi_u[k], bi[k])
                bo_u[k] = max(bo_u[k], bo[k])
            total += cnt
        # the union: a box equal to one of an earlier level is counted once
        if total:
            s = max(height, width) + 1
            key = np.empty(total, np.int64)
            for r in range(total):
                key[r] = (
                    (np.int64(boxes[r, 0]) * s + np.int64(boxes[r, 1])) * s + np.int64(boxes[r, 2])
                ) * s + np.int64(boxes[r, 3])
            order = np.argsort(key)
            for r in range(total):
                keep[order[r]] = r == 0 or key[order[r]] != key[order[r - 1]]
        _tally(
            n_gt,
            total,
            bi_u,
            bo_u,
            best_pred,
            keep,
            t_iobb,
            t_iou,
            found_iobb[i, n_lv],
            found_iou[i, n_lv],
            fp_iobb[i, n_lv],
            fp_any[i, n_lv:],
        )
    return 0, found_iobb, found_iou, fp_iobb, fp_any
