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
maps, instead of levels x pixels), stored per (row, level) in ``x`` order. Holes can only be made
of the gaps *between* two foreground runs of a row at a level. Then per level, the runs of two
adjacent rows are joined (8-connectivity) and so are their gaps (4-connectivity: they share a
column); a gap reaches the edge when it is in the first/last row or touches a row's background
outside that row's runs. A union-find node stands for a component (or a hole) and carries its
box; a run or gap that continues one of the row above takes that one's node (which may be
joined to another later: whoever uses it looks its root up).

Most (row, level) pairs of a smooth map continue the row above run for run (92-96% on the
benchmark's CAM-like maps): run ``j`` touches the row above's run ``j`` only and gap ``j`` its
gap ``j``. That case touches no node: each run's (and gap's) record carries its *chain*, the
runs continuing one another row after row, with the chain's node and ``x`` extent, which the
pair only copies and widens (one run continuing one run, the most common pair, has a straight
path of its own). Any other pair goes through the general merge. Its runs that still match the
row above's one to one, counted from the left and from the right until the first that does not
(it touches the run at its place above only), carry on their chains as above, and so do the gaps
between two of them; for the runs and gaps in between, the chains of the row above end there
(their nodes take their ``x`` extent and last row), then unions, new nodes and edge flags. At
1024 px that leaves about a quarter of a general pair's runs to the union-find. The last row
always goes through it entirely, so every chain has ended when the scan does. Levels below the
lowest level of a row and of the row above (a quarter of the pairs on CAM-like maps) are one
run over the whole width in both: their chains carry on untouched, with the node kept aside
until the level leaves that zone, when the row above's record is rebuilt from it.

Equality with ``findContours`` is tested on random and adversarial maps against
:func:`lesionsweep.metrics.reference.reference_mine_boxes`.
:func:`lesionsweep.metrics.maxbox_kernel.maxbox_counts` runs MaxBoxAccV2 on a whole batch in
one call on top of it.

Compiled with numba (``cache=True``: the first call on a machine compiles for a few seconds).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["level_boxes"]

# a node: [parent, x0, x1, y0, y1, level, is_hole, reaches_edge] (int32)
_NODE_FIELDS = 8


@numba.njit(cache=True, nogil=True, inline="always")
def _find(nd, i):
    """Root of node ``i`` (path halving)."""
    while nd[i, 0] != i:
        nd[i, 0] = nd[nd[i, 0], 0]
        i = nd[i, 0]
    return i


@numba.njit(cache=True, nogil=True, inline="always")
def _join(nd, a, b):
    """Union of roots ``a != b`` (of one level and kind): the smaller index stays the root and
    takes the union of the boxes and of the edge flags. Returns it."""
    if b < a:
        a, b = b, a
    nd[b, 0] = a
    nd[a, 1] = min(nd[a, 1], nd[b, 1])
    nd[a, 2] = max(nd[a, 2], nd[b, 2])
    nd[a, 3] = min(nd[a, 3], nd[b, 3])
    nd[a, 4] = max(nd[a, 4], nd[b, 4])
    nd[a, 7] |= nd[b, 7]
    return a


@numba.njit(cache=True, nogil=True)
def _grow(nd):
    """The node array with twice the room (its nodes copied)."""
    new = np.empty((2 * nd.shape[0], _NODE_FIELDS), np.int32)
    new[: nd.shape[0]] = nd
    return new


@numba.njit(cache=True, nogil=True, inline="always")
def _merge_into(nd, lab, node):
    """Merge ``node``'s component into the label ``lab`` (-1: none yet) of a run or gap that
    touches it. Returns the label (a root)."""
    r = _find(nd, node)
    if lab < 0 or r == lab:
        return r
    return _join(nd, lab, r)


@numba.njit(cache=True, nogil=True, inline="always")
def _open_node(nd, n, x0, x1, y, k, hole, edge):
    """Node ``n``: a run (``hole=0``) or gap (``hole=1``) ``x0..x1`` of row ``y``, level ``k``,
    its own root (``nd`` has room for it)."""
    nd[n, 0] = n
    nd[n, 1] = x0
    nd[n, 2] = x1
    nd[n, 3] = y
    nd[n, 4] = y
    nd[n, 5] = k
    nd[n, 6] = hole
    nd[n, 7] = edge


@numba.njit(cache=True, nogil=True, inline="always")
def _extend_node(nd, r, x0, x1, y):
    """Root ``r`` takes the columns ``x0..x1`` and reaches row ``y`` (the rows come in order): a
    run / gap of row ``y``, or a chain ending in row ``y``."""
    nd[r, 1] = min(nd[r, 1], x0)
    nd[r, 2] = max(nd[r, 2], x1)
    nd[r, 4] = y


@numba.njit(cache=True, nogil=True, inline="always")
def _carry(R, b, p, k, o, op, gap, lo, hi):
    """The run chain (``gap=0``: node and ``x`` extent at fields 2, 4, 5 of a record) or the
    chain of the gap after the run (``gap=1``: fields 3, 6, 7) of the record at ``R[p, k, op:]``
    carries on at ``R[b, k, o:]``, widened to ``lo..hi``.

    Used by the general merge only: the straight paths of :func:`_components` keep the same
    three stores written out, since calling this there measured 7-47% slower (A/B in one
    process, 1024 / 224 px)."""
    R[b, k, o + 2 + gap] = R[p, k, op + 2 + gap]
    R[b, k, o + 4 + 2 * gap] = min(R[p, k, op + 4 + 2 * gap], lo)
    R[b, k, o + 5 + 2 * gap] = max(R[p, k, op + 5 + 2 * gap], hi)


@numba.njit(cache=True, nogil=True)
def _row_runs(img, y, lut, ev, cnt, R, b):
    """The runs of every level in row ``y`` (see :func:`_components`): ``R[b, k]`` and
    ``cnt[b, k]`` for ``k`` below the row's top level. Returns ``(top, lo)``, the row's top
    level and its lowest (0 where the row starts below every level).

    A function of its own, not inlined in :func:`_components`: there the scan and the build
    competed for registers with the matching and reloaded their pointers from the stack on
    every change (2-4% of the whole at every size, A/B in one process)."""
    start = cnt[2]
    width = img.shape[1]
    n_ev = 0
    prev = 0
    top = 0
    for x in range(width):
        cur = lut[img[y, x]]
        ev[n_ev] = (x << 32) | cur  # one store per pixel
        n_ev += cur != prev
        prev = cur
    n_in = n_ev  # the changes inside the row (the last one below ends it)
    ev[n_ev] = width << 32
    n_ev += prev != 0
    lo = 1 << 30
    for i in range(n_in):  # the row's top and lowest levels, over its changes only
        c = ev[i] & 0xFFFFFFFF
        top = max(top, c)
        lo = min(lo, c)
    if n_in == 0 or ev[0] >> 32 != 0:  # the row starts below every level
        lo = 0
    for k in range(top):
        cnt[b, k] = 0
    pv = 0
    for i in range(n_ev):
        x = ev[i] >> 32
        c = ev[i] & 0xFFFFFFFF
        if c == pv + 1:  # ~90% of the changes on CAM-like maps are of one level
            start[pv] = x
        elif c == pv - 1:
            j = cnt[b, c]
            R[b, c, 8 * j] = start[c]
            R[b, c, 8 * j + 1] = x - 1
            cnt[b, c] = j + 1
        elif c > pv:  # runs of levels pv..c-1 start at x (kept until they end)
            for k in range(pv, c):
                start[k] = x
        else:  # runs of levels c..pv-1 end at x - 1
            for k in range(c, pv):
                j = cnt[b, k]
                R[b, k, 8 * j] = start[k]
                R[b, k, 8 * j + 1] = x - 1
                cnt[b, k] = j + 1
        pv = c
    return top, lo


@numba.njit(cache=True, nogil=True)
def _components(img, lut, ev, cnt, R, nd):
    """Components and holes of ``lut[img] > k`` for every level ``k``, in one scan of the rows.

    Args:
        img: uint ``[H, W]`` image; ``lut[v]`` (int32) is the level index of value ``v``.
        ev, cnt, R, nd: work arrays from :func:`_scratch` (``nd`` may be replaced by a larger
            one).

    Returns:
        ``(nd, n)``: nodes ``nd[:n]`` (see ``_NODE_FIELDS``); each root (``nd[i, 0] == i``) that
        is a component, or a hole not reaching the edge, has a box (:func:`_node_box`).

    A row's runs of level ``k`` are ``R[b, k, 8 j : 8 j + 8]``: start, end, node of the run's
    chain, node of the gap after it, the run chain's ``x`` extent, the gap chain's ``x`` extent
    (``b`` alternates between the row buffers).
    """
    full_node = cnt[3]
    height, width = img.shape
    n_nd = 0
    kp = 0
    lo_p = 0  # the row above's lowest level
    zp = 0  # levels below zp: full rows in the row above and the one before (chains not copied)
    for y in range(height):
        b = y & 1
        p = 1 - b
        top, lo = _row_runs(img, y, lut, ev, cnt, R, b)
        edge_row = y == 0 or y == height - 1
        # levels below zone are full rows here and in the row above: their chains carry on
        # without a copy (the node is kept aside, and the row above's chain fields are rebuilt
        # from it when the level leaves the zone; the last row leaves it with every level)
        zone = 0 if edge_row else min(lo, lo_p)
        for k in range(zp, zone):
            full_node[k] = R[p, k, 2]
        for k in range(zone, zp):
            R[p, k, 2] = full_node[k]
            R[p, k, 4] = 0
            R[p, k, 5] = width - 1
        for k in range(zone, max(top, kp)):
            nc = cnt[b, k] if k < top else 0
            npv = cnt[p, k] if k < kp else 0
            if nc == 1 and npv == 1 and not edge_row:
                s = R[b, k, 0]
                e = R[b, k, 1]
                if (s <= R[p, k, 1] + 1) & (R[p, k, 0] <= e + 1):  # one run continuing one run
                    R[b, k, 2] = R[p, k, 2]
                    R[b, k, 4] = min(R[p, k, 4], s)
                    R[b, k, 5] = max(R[p, k, 5], e)
                    continue
            elif nc == 2 and npv == 2 and not edge_row:  # two runs and the gap between them
                s0 = R[b, k, 0]
                e0 = R[b, k, 1]
                s1 = R[b, k, 8]
                e1 = R[b, k, 9]
                ps0 = R[p, k, 0]
                pe0 = R[p, k, 1]
                ps1 = R[p, k, 8]
                pe1 = R[p, k, 9]
                if (
                    (s0 <= pe0 + 1)
                    & (ps0 <= e0 + 1)
                    & (s1 <= pe1 + 1)
                    & (ps1 <= e1 + 1)
                    & (e0 + 1 <= ps1 - 1)
                    & (pe0 + 1 <= s1 - 1)
                ):
                    R[b, k, 2] = R[p, k, 2]
                    R[b, k, 4] = min(R[p, k, 4], s0)
                    R[b, k, 5] = max(R[p, k, 5], e0)
                    R[b, k, 3] = R[p, k, 3]
                    R[b, k, 6] = min(R[p, k, 6], e0 + 1)
                    R[b, k, 7] = max(R[p, k, 7], s1 - 1)
                    R[b, k, 10] = R[p, k, 10]
                    R[b, k, 12] = min(R[p, k, 12], s1)
                    R[b, k, 13] = max(R[p, k, 13], e1)
                    continue
            elif nc == npv and nc > 0 and not edge_row:
                # the common case, rows continuing one another run for run: each run / gap
                # carries on the chain of the one above (its node, the chain's x extent); if
                # anything else touches, the general path below redoes the pair
                ok = True
                s = R[b, k, 0]
                ps = R[p, k, 0]
                for j in range(nc - 1):
                    e = R[b, k, 8 * j + 1]
                    pe = R[p, k, 8 * j + 1]
                    ok &= (s <= pe + 1) & (ps <= e + 1)
                    R[b, k, 8 * j + 2] = R[p, k, 8 * j + 2]
                    R[b, k, 8 * j + 4] = min(R[p, k, 8 * j + 4], s)
                    R[b, k, 8 * j + 5] = max(R[p, k, 8 * j + 5], e)
                    # gap j, up to the next run (not touching run j+1 / prev run j+1)
                    s = R[b, k, 8 * j + 8]
                    ps = R[p, k, 8 * j + 8]
                    ok &= (e + 1 <= ps - 1) & (pe + 1 <= s - 1)
                    R[b, k, 8 * j + 3] = R[p, k, 8 * j + 3]
                    R[b, k, 8 * j + 6] = min(R[p, k, 8 * j + 6], e + 1)
                    R[b, k, 8 * j + 7] = max(R[p, k, 8 * j + 7], s - 1)
                o = 8 * nc - 8  # the last run (no gap after it)
                e = R[b, k, o + 1]
                pe = R[p, k, o + 1]
                ok &= (s <= pe + 1) & (ps <= e + 1)
                R[b, k, o + 2] = R[p, k, o + 2]
                R[b, k, o + 4] = min(R[p, k, o + 4], s)
                R[b, k, o + 5] = max(R[p, k, o + 5], e)
                if ok:
                    continue
            # general path. Runs matching the row above's one to one from the left (f) and
            # from the right (g) only carry on their chains, as do the gaps between them; the
            # row above's other chains end here (their nodes take their x extent and last row),
            # then this row's other runs and gaps are joined to them
            while n_nd + 2 * nc > nd.shape[0]:  # room for a node per run and gap
                nd = _grow(nd)
            f = 0
            g = 0
            if (nc > 0) & (npv > 0) & (nc + npv > 2) & (not edge_row):  # (1 vs 1: none)
                m = min(nc, npv)
                while f < m:  # run f touches run f above only (runs f-1, f match: so does gap f-1)
                    o = 8 * f
                    s = R[b, k, o]
                    e = R[b, k, o + 1]
                    ps = R[p, k, o]
                    pe = R[p, k, o + 1]
                    sn = R[b, k, o + 8] if f + 1 < nc else width + 2
                    psn = R[p, k, o + 8] if f + 1 < npv else width + 2
                    if not ((s <= pe + 1) & (ps <= e + 1) & (e + 2 <= psn) & (pe + 2 <= sn)):
                        break
                    _carry(R, b, p, k, o, o, 0, s, e)
                    if f > 0:  # and the gap before it
                        _carry(R, b, p, k, o - 8, o - 8, 1, R[b, k, o - 7] + 1, s - 1)
                    f += 1
                while g < m - f:  # run nc-1-g touches run npv-1-g above only (and so on)
                    o = 8 * (nc - 1 - g)
                    op = 8 * (npv - 1 - g)
                    s = R[b, k, o]
                    e = R[b, k, o + 1]
                    ps = R[p, k, op]
                    pe = R[p, k, op + 1]
                    ep = R[b, k, o - 7] if o > 0 else -2
                    pep = R[p, k, op - 7] if op > 0 else -2
                    if not ((s <= pe + 1) & (ps <= e + 1) & (ep + 2 <= ps) & (pep + 2 <= s)):
                        break
                    _carry(R, b, p, k, o, op, 0, s, e)
                    if g > 0:  # and the gap after it
                        _carry(R, b, p, k, o, op, 1, e + 1, R[b, k, o + 8] - 1)
                    g += 1
            gf = max(f - 1, 0)  # gaps gf .. gb - 1 / gp - 1 (of the row above) are in between
            gb = min(nc - g, nc - 1)
            gp = min(npv - g, npv - 1)
            for i in range(f, npv - g):  # (a chain's node may have been joined since: its root)
                r = _find(nd, R[p, k, 8 * i + 2])
                _extend_node(nd, r, R[p, k, 8 * i + 4], R[p, k, 8 * i + 5], y - 1)
            for i in range(gf, gp):
                r = _find(nd, R[p, k, 8 * i + 3])
                _extend_node(nd, r, R[p, k, 8 * i + 6], R[p, k, 8 * i + 7], y - 1)
            i = f
            for j in range(f, nc - g):
                s = R[b, k, 8 * j]
                e = R[b, k, 8 * j + 1]
                while i < npv - g and R[p, k, 8 * i + 1] + 1 < s:
                    i += 1
                lab = -1
                ii = i
                while ii < npv - g and R[p, k, 8 * ii] <= e + 1:
                    lab = _merge_into(nd, lab, R[p, k, 8 * ii + 2])
                    ii += 1
                if ii > i:
                    i = ii - 1
                if lab < 0:
                    _open_node(nd, n_nd, s, e, y, k, 0, 0)
                    lab = n_nd
                    n_nd += 1
                else:
                    _extend_node(nd, lab, s, e, y)
                R[b, k, 8 * j + 2] = lab
                R[b, k, 8 * j + 4] = s
                R[b, k, 8 * j + 5] = e
            if nc >= 2:
                ps0 = R[p, k, 0] if npv > 0 else 0
                pel = R[p, k, 8 * npv - 7] if npv > 0 else 0
                i = gf
                for j in range(gf, gb):
                    a = R[b, k, 8 * j + 1] + 1
                    z = R[b, k, 8 * j + 8] - 1
                    edge = 1 if (edge_row or npv == 0 or a < ps0 or z > pel) else 0
                    while i < gp and R[p, k, 8 * i + 8] - 1 < a:
                        i += 1
                    lab = -1
                    ii = i
                    while ii < gp and R[p, k, 8 * ii + 1] + 1 <= z:
                        lab = _merge_into(nd, lab, R[p, k, 8 * ii + 3])
                        ii += 1
                    if ii > i:
                        i = ii - 1
                    if lab < 0:
                        _open_node(nd, n_nd, a, z, y, k, 1, edge)
                        lab = n_nd
                        n_nd += 1
                    else:
                        _extend_node(nd, lab, a, z, y)
                        nd[lab, 7] |= edge
                    R[b, k, 8 * j + 3] = lab
                    R[b, k, 8 * j + 6] = a
                    R[b, k, 8 * j + 7] = z
            if npv >= 2:
                if nc == 0:
                    for i in range(npv - 1):
                        nd[_find(nd, R[p, k, 8 * i + 3]), 7] = 1
                else:
                    cs0 = R[b, k, 0]
                    cel = R[b, k, 8 * nc - 7]
                    i = 0
                    while i < npv - 1 and R[p, k, 8 * i + 1] + 1 < cs0:
                        nd[_find(nd, R[p, k, 8 * i + 3]), 7] = 1
                        i += 1
                    i = npv - 2
                    while i >= 0 and R[p, k, 8 * i + 8] - 1 > cel:
                        nd[_find(nd, R[p, k, 8 * i + 3]), 7] = 1
                        i -= 1
        kp = top
        lo_p = lo
        zp = zone
    return nd, n_nd


@numba.njit(cache=True, nogil=True)
def _scratch(width: int, n_levels: int):
    """Work arrays of :func:`_components` for rows of ``width`` and up to ``n_levels`` levels:
    ``ev [W + 2]`` the row's changes, ``x << 32 | level from x on`` (int64: one store a pixel),
    ``cnt [4, K]`` runs per (row buffer, level), the start of each level's open run and the
    node of each level's chain while it is a full row (see :func:`_components`); uint32, so
    that indices computed from them need no negative-index wraparound (2-3% at every size),
    ``R [2, K, 8 S]`` per (row buffer, level) its runs in ``x`` order, a record of 8 each (see
    :func:`_components`); ``nd`` nodes (grown)."""
    # runs per (row, level) at most, + 2: nothing reads past them (checked under
    # NUMBA_BOUNDSCHECK), but without the 2 a level's records start a power-of-two apart at 512
    # and 1024 px and share cache sets (3-5% slower there, A/B in one process)
    stride = (width + 1) // 2 + 2
    k = n_levels + 1
    return (
        np.empty(width + 2, np.int64),
        np.zeros((4, k), np.uint32),
        np.empty((2, k, 8 * stride), np.int32),
        np.empty((1024, _NODE_FIELDS), np.int32),
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _node_box(nd, i, width, height):
    """``(has_box, x0, y0, x1, y1)`` of node ``i``: a root that is a component or a hole."""
    if nd[i, 0] != i or (nd[i, 6] == 1 and nd[i, 7] == 1):
        return False, 0, 0, 0, 0
    if nd[i, 6] == 0:
        return True, nd[i, 1], nd[i, 3], min(nd[i, 2] + 1, width - 1), min(nd[i, 4] + 1, height - 1)
    return (
        True,
        nd[i, 1] - 1,
        nd[i, 3] - 1,
        min(nd[i, 2] + 2, width - 1),
        min(nd[i, 4] + 2, height - 1),
    )


@numba.njit(cache=True, nogil=True)
def _level_boxes(q, lut, n_levels):
    height, width = q.shape
    ev, cnt, R, nd = _scratch(width, n_levels)
    nd, n_nd = _components(q, lut, ev, cnt, R, nd)
    m = 0
    for i in range(n_nd):
        m += _node_box(nd, i, width, height)[0]
    out_level = np.empty(m, np.int64)
    out_box = np.empty((m, 4), np.int64)
    m = 0
    for i in range(n_nd):
        has, x0, y0, x1, y1 = _node_box(nd, i, width, height)
        if has:
            out_level[m] = nd[i, 5]
            out_box[m, 0] = x0
            out_box[m, 1] = y0
            out_box[m, 2] = x1
            out_box[m, 3] = y1
            m += 1
    return out_level, out_box


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
    arr = np.ascontiguousarray(q, dtype=np.uint16)  # one compiled signature
    if arr.ndim != 2:
        raise ValueError(f"level_boxes: q must be 2-D, got shape {arr.shape}")
    n_levels = int(n_levels)
    top = int(arr.max()) if arr.size else 0
    lut = np.minimum(np.arange(top + 1), n_levels).astype(np.int32)  # q above K: K
    return _level_boxes(arr, lut, min(n_levels, top))  # no runs at levels >= max(q)
