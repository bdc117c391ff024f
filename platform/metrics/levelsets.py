"""Boxes of every contour at every threshold of a score map in one pass (wsolevaluation's boxes).

wsolevaluation mines MaxBoxAccV2's boxes with one ``cv2.findContours(RETR_TREE)`` per threshold:
~100 scans of the whole map. The boxes it gets have a closed form, computed here for all
thresholds at once from the run-length encoding of the map's rows:

* ``findContours`` follows the outer border of every 8-connected foreground component and the
  border of every hole, a 4-connected background component that does not reach the image edge
  (OpenCV pads the image with background). ``boundingRect`` of an outer border is the
  component's bounding box; the border of a hole runs through the foreground pixels 4-adjacent
  to it, so its ``boundingRect`` is the hole's bounding box grown by one pixel on every side.
* In wsolevaluation's form ``(x, y, x + w, y + h)`` clipped to ``(W-1, H-1)``: a component with
  inclusive pixel extent ``x0..x1, y0..y1`` gives ``(x0, y0, min(x1+1, W-1), min(y1+1, H-1))``,
  a hole ``(x0-1, y0-1, min(x1+2, W-1), min(y1+2, H-1))``.

The map comes as level indices ``q`` (a pixel is foreground at level ``k`` iff ``q > k``). Along
a row, a foreground run of level ``k`` starts wherever ``q`` rises past ``k``, so one scan yields
the runs of all levels (as many as the rows' total variation: about the number of pixels for a
smooth map, instead of levels x pixels). Per level, runs of adjacent rows are joined with a
union-find (8-connectivity). Holes can only be made of the gaps *between* two foreground runs of
a row; a gap joins the gaps of the next row it touches (4-connectivity) and reaches the edge when
it is in the first/last row or touches a row's background at either end. Equality with
``findContours`` is tested on random maps against
:func:`lesionsweep.metrics.reference.reference_mine_boxes`.

Compiled with numba (``cache=True``: the first call on a machine compiles for a few seconds).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["level_boxes"]


@numba.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _runs(q: np.ndarray, n_levels: int):
    """Foreground runs ``[start, end]`` (inclusive) of every (row, level), row-major buckets."""
    height, width = q.shape
    count = np.zeros((height, n_levels), np.int64)
    kmax = np.zeros(height, np.int64)  # levels k < kmax[y] have runs in row y, others none
    for y in range(height):
        prev = 0
        top = 0
        for x in range(width):
            cur = min(np.int64(q[y, x]), n_levels)
            if cur > prev:
                for k in range(prev, cur):
                    count[y, k] += 1
                top = max(top, cur)
            prev = cur
        kmax[y] = top
    offset = np.empty((height, n_levels), np.int64)
    total = 0
    for y in range(height):
        for k in range(n_levels):
            offset[y, k] = total
            total += count[y, k]
    starts = np.empty(total, np.int64)
    ends = np.empty(total, np.int64)
    put_s = offset.copy()
    put_e = offset.copy()
    for y in range(height):
        prev = 0
        for x in range(width + 1):
            cur = min(np.int64(q[y, x]), n_levels) if x < width else 0
            if cur > prev:
                for k in range(prev, cur):
                    starts[put_s[y, k]] = x
                    put_s[y, k] += 1
            elif cur < prev:
                for k in range(cur, prev):
                    ends[put_e[y, k]] = x - 1
                    put_e[y, k] += 1
            prev = cur
    return starts, ends, count, offset, kmax


@numba.njit(cache=True, nogil=True)
def _join(parent, xmin, xmax, ymin, ymax, edge, a: int, b: int) -> None:
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra == rb:
        return
    if rb < ra:
        ra, rb = rb, ra
    parent[rb] = ra
    xmin[ra] = min(xmin[ra], xmin[rb])
    xmax[ra] = max(xmax[ra], xmax[rb])
    ymin[ra] = min(ymin[ra], ymin[rb])
    ymax[ra] = max(ymax[ra], ymax[rb])
    edge[ra] = edge[ra] or edge[rb]


@numba.njit(cache=True, nogil=True)
def _level_boxes(q: np.ndarray, n_levels: int):
    height, width = q.shape
    fs, fe, count, offset, kmax = _runs(q, n_levels)
    n_fg = fs.shape[0]
    # ---- foreground components: runs of adjacent rows touching with 8-connectivity
    parent = np.arange(n_fg)
    xmin = fs.copy()
    xmax = fe.copy()
    ymin = np.empty(n_fg, np.int64)
    for y in range(height):
        for r in range(offset[y, 0], offset[y, 0] + count[y].sum()):
            ymin[r] = y
    ymax = ymin.copy()
    edge = np.zeros(n_fg, np.bool_)
    for y in range(height - 1):
        for k in range(min(kmax[y], kmax[y + 1])):
            o1, n1, o2, n2 = offset[y, k], count[y, k], offset[y + 1, k], count[y + 1, k]
            i = 0
            j = 0
            while i < n1 and j < n2:
                a = o1 + i
                b = o2 + j
                if fe[a] + 1 < fs[b]:
                    i += 1
                elif fe[b] + 1 < fs[a]:
                    j += 1
                else:
                    _join(parent, xmin, xmax, ymin, ymax, edge, a, b)
                    if fe[a] < fe[b]:
                        i += 1
                    else:
                        j += 1
    # ---- holes: gaps between two foreground runs of a row, joined with 4-connectivity
    gcount = np.maximum(count - 1, 0)
    goffset = np.empty((height, n_levels), np.int64)
    n_gap = 0
    for y in range(height):
        for k in range(n_levels):
            goffset[y, k] = n_gap
            n_gap += gcount[y, k]
    gs = np.empty(n_gap, np.int64)
    ge = np.empty(n_gap, np.int64)
    gy = np.empty(n_gap, np.int64)
    gedge = np.zeros(n_gap, np.bool_)
    for y in range(height):
        for k in range(kmax[y]):
            o = offset[y, k]
            g = goffset[y, k]
            for i in range(gcount[y, k]):
                gs[g + i] = fe[o + i] + 1
                ge[g + i] = fs[o + i + 1] - 1
                gy[g + i] = y
                if y == 0 or y == height - 1:
                    gedge[g + i] = True
    # a gap touching an adjacent row's background outside that row's foreground span (or a row
    # without foreground) reaches the image edge through it
    for y in range(height):
        for k in range(kmax[y]):
            if gcount[y, k] == 0:
                continue
            for dy in (-1, 1):
                yy = y + dy
                if yy < 0 or yy >= height:
                    continue
                n = count[yy, k]
                for g in range(goffset[y, k], goffset[y, k] + gcount[y, k]):
                    if n == 0:
                        gedge[g] = True
                    else:
                        first = fs[offset[yy, k]]
                        last = fe[offset[yy, k] + n - 1]
                        if gs[g] < first or ge[g] > last:
                            gedge[g] = True
    gparent = np.arange(n_gap)
    gxmin = gs.copy()
    gxmax = ge.copy()
    gymin = gy.copy()
    gymax = gy.copy()
    for y in range(height - 1):
        for k in range(min(kmax[y], kmax[y + 1])):
            o1, n1, o2, n2 = goffset[y, k], gcount[y, k], goffset[y + 1, k], gcount[y + 1, k]
            i = 0
            j = 0
            while i < n1 and j < n2:
                a = o1 + i
                b = o2 + j
                if ge[a] < gs[b]:
                    i += 1
                elif ge[b] < gs[a]:
                    j += 1
                else:
                    _join(gparent, gxmin, gxmax, gymin, gymax, gedge, a, b)
                    if ge[a] < ge[b]:
                        i += 1
                    else:
                        j += 1
    # ---- one box per foreground root and per hole root
    out_level = np.empty(n_fg + n_gap, np.int64)
    out_box = np.empty((n_fg + n_gap, 4), np.int64)
    m = 0
    for y in range(height):
        for k in range(kmax[y]):
            for r in range(offset[y, k], offset[y, k] + count[y, k]):
                if parent[r] == r:
                    out_level[m] = k
                    out_box[m, 0] = xmin[r]
                    out_box[m, 1] = ymin[r]
                    out_box[m, 2] = min(xmax[r] + 1, width - 1)
                    out_box[m, 3] = min(ymax[r] + 1, height - 1)
                    m += 1
            for g in range(goffset[y, k], goffset[y, k] + gcount[y, k]):
                if gparent[g] == g and not gedge[g]:
                    out_level[m] = k
                    out_box[m, 0] = gxmin[g] - 1
                    out_box[m, 1] = gymin[g] - 1
                    out_box[m, 2] = min(gxmax[g] + 2, width - 1)
                    out_box[m, 3] = min(gymax[g] + 2, height - 1)
                    m += 1
    return out_level[:m], out_box[:m]


def level_boxes(q: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of all contours of ``q > k`` for every level ``k < n_levels``.

    Args:
        q: int ``[H, W]`` level indices in ``0..65535`` (foreground at level ``k`` iff ``q > k``).
        n_levels: number of levels ``K``.

    Returns:
        ``(levels, boxes)``: int64 ``[M]`` level of each box and int64 ``[M, 4]`` boxes in
        wsolevaluation's form ``(x, y, x + w, y + h)`` clipped to ``(W-1, H-1)``, one per outer
        border and one per hole border, in no particular order. A level without foreground has
        no box here (wsolevaluation then uses ``[0, 0, 0, 0]``).
    """
    arr = np.ascontiguousarray(q, dtype=np.uint16)  # one compiled signature; K <= 256 levels
    if arr.ndim != 2:
        raise ValueError(f"level_boxes: q must be 2-D, got shape {arr.shape}")
    return _level_boxes(arr, int(n_levels))
