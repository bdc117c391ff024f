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
a row, a foreground run of level ``k`` starts wherever ``q`` rises past ``k`` and ends where it
falls below, so one scan of the row's changes of ``q`` (compacted first, without branches) yields
the runs of all levels, as many as the rows' total rise (about 0.3-0.4 per pixel on CAM-like
maps, instead of levels x pixels). A run becomes a union-find node when it closes and is linked
to the list of its (row, level), in ``x`` order; the lists of two adjacent rows are merged per
level (8-connectivity). Holes can only be made of the gaps *between* two foreground runs of a
row; a gap joins the gaps of the next row it shares a column with (4-connectivity) and reaches
the edge when it is in the first/last row or touches a row's background outside that row's runs.
Equality with ``findContours`` is tested on random and adversarial maps against
:func:`lesionsweep.metrics.reference.reference_mine_boxes`.
:func:`maxbox_counts` runs MaxBoxAccV2 on a whole batch in one call on top of it.

Compiled with numba (``cache=True``: the first call on a machine compiles for a few seconds).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["level_boxes", "maxbox_counts"]


@numba.njit(cache=True, nogil=True, inline="always")
def _root(par: np.ndarray, i: int) -> int:
    while par[i] != i:
        par[i] = par[par[i]]
        i = par[i]
    return i


@numba.njit(cache=True, nogil=True)
def _level_boxes(q: np.ndarray, n_levels: int, ws: np.ndarray, gw: np.ndarray):
    """One scan of the rows: runs and gaps of all levels, joined row to row (see module doc).

    A run of level ``k`` becomes a node when it closes; the nodes of one (row, level) form a
    linked list in ``x`` order (``head``/``tail`` per row buffer ``b = y & 1``), and a node
    that closes after another of its (row, level) opens a gap node between the two.
    """
    height, width = q.shape
    head = np.full((2, n_levels + 1), -1, np.int64)
    tail = np.full((2, n_levels + 1), -1, np.int64)
    ghead = np.full((2, n_levels + 1), -1, np.int64)
    gtail = np.full((2, n_levels + 1), -1, np.int64)
    kmax = np.zeros(2, np.int64)
    ostart = np.zeros(n_levels + 1, np.int64)
    ev_x = np.empty(width + 2, np.int64)
    ev_q = np.empty(width + 2, np.int64)
    ev_p = np.empty(width + 2, np.int64)
    n_cap = 1  # runs: the rows' total rise of q; gaps are fewer
    for y in range(height):
        prev = 0
        for x in range(width):
            cur = min(np.int64(q[y, x]), n_levels)
            n_cap += max(cur - prev, 0)  # type: ignore[operator]  # numba ints
            prev = cur  # type: ignore[assignment]  # numba ints
    if ws.shape[1] < n_cap:
        ws = np.empty((10, 2 * n_cap), np.int32)
    if gw.shape[1] < n_cap:
        gw = np.empty((10, 2 * n_cap), np.int32)
    rs_, re_, par, bx0, bx1, by0, by1, lv_, nxt = (
        ws[0],
        ws[1],
        ws[2],
        ws[3],
        ws[4],
        ws[5],
        ws[6],
        ws[7],
        ws[8],
    )
    gs_, ge_, gpar, gx0, gx1, gy0, gy1, glv, gnxt, gedge = (
        gw[0],
        gw[1],
        gw[2],
        gw[3],
        gw[4],
        gw[5],
        gw[6],
        gw[7],
        gw[8],
        gw[9],
    )
    n_fg = 0
    n_gap = 0
    for y in range(height):
        b = y & 1
        p = 1 - b
        for k in range(kmax[b]):
            head[b, k] = -1
            tail[b, k] = -1
            ghead[b, k] = -1
            gtail[b, k] = -1
        edge_row = 1 if y == 0 or y == height - 1 else 0
        # the row's changes of q, compacted without branches (they are unpredictable)
        n_ev = 0
        prev = 0
        top = 0
        for x in range(width + 1):
            cur = min(np.int64(q[y, x]), n_levels) if x < width else 0
            ev_x[n_ev] = x
            ev_q[n_ev] = cur
            ev_p[n_ev] = prev
            n_ev += cur != prev
            top = max(top, cur)  # type: ignore[assignment]  # numba ints
            prev = cur  # type: ignore[assignment]  # numba ints
        for e in range(n_ev):
            x = ev_x[e]
            cur = ev_q[e]
            prev = ev_p[e]
            if cur > prev:
                for k in range(prev, cur):
                    ostart[k] = x
            else:
                for k in range(cur, prev):
                    node = n_fg
                    n_fg += 1
                    s = ostart[k]
                    rs_[node] = s
                    re_[node] = x - 1
                    par[node] = node
                    bx0[node] = s
                    bx1[node] = x - 1
                    by0[node] = y
                    by1[node] = y
                    lv_[node] = k
                    nxt[node] = -1
                    t = tail[b, k]
                    if t < 0:
                        head[b, k] = node
                    else:
                        nxt[t] = node
                        g = n_gap  # the gap between run t and this run
                        n_gap += 1
                        gs_[g] = re_[t] + 1
                        ge_[g] = s - 1
                        gpar[g] = g
                        gx0[g] = re_[t] + 1
                        gx1[g] = s - 1
                        gy0[g] = y
                        gy1[g] = y
                        glv[g] = k
                        gnxt[g] = -1
                        gedge[g] = edge_row
                        gt = gtail[b, k]
                        if gt < 0:
                            ghead[b, k] = g
                        else:
                            gnxt[gt] = g
                        gtail[b, k] = g
                    tail[b, k] = node
        kmax[b] = top
        if y == 0:
            continue
        kp = kmax[p]
        # ---- foreground: runs of the two rows within one column (8-connectivity)
        for k in range(min(top, kp)):
            i = head[p, k]
            j = head[b, k]
            while i >= 0 and j >= 0:
                if re_[i] + 1 < rs_[j]:
                    i = nxt[i]
                elif re_[j] + 1 < rs_[i]:
                    j = nxt[j]
                else:
                    ra = _root(par, i)
                    rb = _root(par, j)
                    if ra != rb:
                        if rb < ra:
                            ra, rb = rb, ra
                        par[rb] = ra
                        bx0[ra] = min(bx0[ra], bx0[rb])
                        bx1[ra] = max(bx1[ra], bx1[rb])
                        by1[ra] = max(by1[ra], by1[rb])
                    if re_[i] < re_[j]:
                        i = nxt[i]
                    else:
                        j = nxt[j]
        # ---- holes: a gap touching the other row's background outside its runs reaches the
        # edge; gaps of the two rows that share a column join (4-connectivity)
        for k in range(max(top, kp)):
            gb = ghead[b, k] if k < top else -1
            gp = ghead[p, k] if k < kp else -1
            if gb < 0 and gp < 0:
                continue
            for r in range(2):
                g = gb if r == 0 else gp
                o_row = p if r == 0 else b
                has_o = k < (kp if r == 0 else top)
                first = rs_[head[o_row, k]] if has_o else 0
                last = re_[tail[o_row, k]] if has_o else 0
                while g >= 0:
                    if not has_o or gs_[g] < first or ge_[g] > last:
                        gedge[_root(gpar, g)] = 1
                    g = gnxt[g]
            i = gp
            j = gb
            while i >= 0 and j >= 0:
                if ge_[i] < gs_[j]:
                    i = gnxt[i]
                elif ge_[j] < gs_[i]:
                    j = gnxt[j]
                else:
                    ra = _root(gpar, i)
                    rb = _root(gpar, j)
                    if ra != rb:
                        if rb < ra:
                            ra, rb = rb, ra
                        gpar[rb] = ra
                        gx0[ra] = min(gx0[ra], gx0[rb])
                        gx1[ra] = max(gx1[ra], gx1[rb])
                        gy1[ra] = max(gy1[ra], gy1[rb])
                        gedge[ra] = gedge[ra] | gedge[rb]
                    if ge_[i] < ge_[j]:
                        i = gnxt[i]
                    else:
                        j = gnxt[j]
    # ---- one box per foreground root and per hole root
    m = 0
    for i in range(n_fg):
        if par[i] == i:
            m += 1
    for g in range(n_gap):
        if gpar[g] == g and gedge[g] == 0:
            m += 1
    out_level = np.empty(m, np.int64)
    out_box = np.empty((m, 4), np.int64)
    m = 0
    for i in range(n_fg):
        if par[i] == i:
            out_level[m] = lv_[i]
            out_box[m, 0] = bx0[i]
            out_box[m, 1] = by0[i]
            out_box[m, 2] = min(bx1[i] + 1, width - 1)
            out_box[m, 3] = min(by1[i] + 1, height - 1)
            m += 1
    for g in range(n_gap):
        if gpar[g] == g and gedge[g] == 0:
            out_level[m] = glv[g]
            out_box[m, 0] = gx0[g] - 1
            out_box[m, 1] = gy0[g] - 1
            out_box[m, 2] = min(gx1[g] + 2, width - 1)
            out_box[m, 3] = min(gy1[g] + 2, height - 1)
            m += 1
    return out_level, out_box, ws, gw


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
    empty = np.empty((10, 0), np.int32)
    out_level, out_box, _, _ = _level_boxes(arr, int(n_levels), empty, empty)
    return out_level, out_box


@numba.njit(cache=True, nogil=True)
def _maxbox_counts(maps, images, gt, gt_off, taus, deltas, num_correct) -> int:
    quantised = images.shape[0] > 0
    n, height, width = images.shape if quantised else maps.shape
    n_tau = taus.shape[0]
    image = np.empty((height, width), np.uint8)  # rebound to images[i] when quantised
    q = np.empty((height, width), np.uint16)
    ws = np.empty((10, 0), np.int32)
    gw = np.empty((10, 0), np.int32)
    correct = np.zeros(num_correct.shape, np.int64)
    levels = np.empty(n_tau, np.int64)
    inverse = np.empty(n_tau, np.int64)
    best = np.empty(n_tau, np.float64)
    lut = np.empty(256, np.uint16)
    for i in range(n):
        # uint8(map * 255) as numpy truncates it, and which values occur
        present = np.zeros(256, np.int64)
        if quantised:
            image = images[i]
            for y in range(height):
                for x in range(width):
                    present[image[y, x]] = 1
        else:
            m = maps[i]
            for y in range(height):
                for x in range(width):
                    v = m[y, x]
                    if not (v >= 0.0 and v <= 1.0):
                        return 1
                    u = np.uint8(v * 255)
                    image[y, x] = u
                    present[u] = 1
        mx = 0
        for v in range(256):
            if present[v]:
                mx = v
        for v in range(1, 256):
            present[v] += present[v - 1]  # number of values <= v that occur
        # thresholds int(tau * max) with the same binary image share one level
        n_lv = 0
        last_key = -1
        for t in range(n_tau):
            thr = int(taus[t] * mx)
            key = present[min(thr, 255)]
            if key != last_key:
                levels[n_lv] = thr
                n_lv += 1
                last_key = key
            inverse[t] = n_lv - 1
        k = 0
        for v in range(256):  # lut[v]: number of levels below v (foreground at k iff q > k)
            while k < n_lv and levels[k] < v:
                k += 1
            lut[v] = k
        for y in range(height):
            for x in range(width):
                q[y, x] = lut[image[y, x]]
        level_of, boxes, ws, gw = _level_boxes(q, n_lv, ws, gw)
        # best IoU ("+1" convention, as calculate_multiple_iou) per level over boxes x GT
        g0 = gt_off[i]
        g1 = gt_off[i + 1]
        for k in range(n_lv):
            best[k] = -1.0
            if levels[k] >= mx:  # no foreground: wsolevaluation's box [0, 0, 0, 0]
                best[k] = _best_iou(0, 0, 0, 0, gt, g0, g1)
        for r in range(boxes.shape[0]):
            iou = _best_iou(boxes[r, 0], boxes[r, 1], boxes[r, 2], boxes[r, 3], gt, g0, g1)
            if iou > best[level_of[r]]:
                best[level_of[r]] = iou
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
    binary images; the boxes of every contour of every level (:func:`level_boxes`); the best
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
