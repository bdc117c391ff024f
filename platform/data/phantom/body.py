"""Drawing the anatomy into a film: soft tissue, lungs, ribs, vessels, heart, exposure."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import _Anatomy, _Draws, _Effusion, _lung_params, _lung_sdf, _Pneumothorax
from .banks import (
    _BUBBLE_LEVELS,
    _LOW_G,
    _RIB_TOP,
    _RIB_VARIANTS,
    _VERTEBRA_LEVELS,
    _VESSEL_VARIANTS,
    _bubble_bank,
    _clavicle_stamp,
    _clip01,
    _Field,
    _low_rhs,
    _midline_bank,
    _ramp,
    _rib_bank_f,
    _smooth_matrix,
    _vertebra_bank,
    _vessel_bank_f,
    _work_grid,
    _work_grid1,
)


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
    a, b = max(0, -i0), min(int(stamp.shape[0]), int(sw - i0))
    cl, cr = max(0, -j0), min(int(stamp.shape[1]), int(sw - j0))
    if b > a and cr > cl:
        a_w[i0 + a : i0 + b, j0 + cl : j0 + cr] += stamp[a:b, cl:cr]

    # gastric bubble under the image-right hemidiaphragm: a stamp from the bank (half axes
    # snapped to its levels), centred on the work pixel nearest to (gx, gy)
    gx = cx + s * d.u(0.12, 0.2)
    gy = right.yt + right.h * (1.0 - right.dd * 0.5) + s * d.u(0.04, 0.07)
    ix, iy = d.integer(_BUBBLE_LEVELS), d.integer(_BUBBLE_LEVELS)
    stamp = _bubble_bank(sw, s)[ix][iy]
    i0 = round(gy / kw - 0.5) - stamp.shape[0] // 2
    j0 = round(gx / kw - 0.5) - stamp.shape[1] // 2
    a, b = max(0, -i0), min(int(stamp.shape[0]), int(sw - i0))
    cl, cr = max(0, -j0), min(int(stamp.shape[1]), int(sw - j0))
    if b > a and cr > cl:
        win = a_w[i0 + a : i0 + b, j0 + cl : j0 + cr]
        cv2.scaleAdd(stamp[a:b, cl:cr], -d.u(0.05, 0.12), win, dst=win)
    return a_w, occ, fields
