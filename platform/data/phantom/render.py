"""Rendering one film from (spec, stream, index): the internal render and the public API."""

from __future__ import annotations

import cv2
import numpy as np

from ...errors import DataError
from .anatomy import _cut, _draw_anatomy, _Draws, _Effusion, _KeyDraws, _Pneumothorax, _split_seed
from .banks import _grain_bank_f, _pixel_centres, _upsample_field, _upsample_region, _work_size
from .body import _render_anatomy
from .lesions import _draw_tube, _place_focal
from .spec import (
    _CARDIO,
    _EFFUSION,
    _MASS,
    _NODULE,
    _PTX,
    _SPLIT_ALIASES,
    _SPLIT_STREAMS,
    PHANTOM_CLASSES,
    PhantomItem,
    PhantomSpec,
    _check_int,
    _Compact,
    _Lesion,
)
from .tone import _tone


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
