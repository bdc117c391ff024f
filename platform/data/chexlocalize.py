"""CheXlocalize (Saporta et al., Nature Machine Intelligence 2022) ground-truth files.

CheXlocalize publishes radiologist segmentations of 10 pathologies on CheXpert's validation set
(234 CXRs) and test set (668 CXRs), in two JSON formats (``rajpurkarlab/cheXlocalize``):

* ``gt_segmentations_{val,test}.json``: ``{cxr_id: {pathology: {"size": [h, w], "counts":
  str}}}``, a COCO run-length encoded mask (pycocotools' compressed ``counts`` string; the
  uncompressed list-of-ints form is accepted too) at the film's original size. Every CXR of the
  set is a key and every one of the 10 pathologies is present, empty masks included.
* ``gt_annotations_{val,test}.json``: ``{cxr_id: {"img_size": [h, w], pathology: [[[x, y],
  ...], ...]}}``, the raw polygon contours (one list of ``[x, y]`` vertices per drawn region),
  only for CXRs and pathologies with a positive label.

CXR ids are ``patientNNNNN_studyN_viewN_frontal`` (or ``_lateral``) and name the CheXpert image
``<set>/patientNNNNN/studyN/viewN_frontal.jpg`` (``<set>`` is ``valid`` or ``test``).

Pathology names: CheXlocalize's JSON files say ``Airspace Opacity`` where CheXpert's CSV column
(and the paper's text) say ``Lung Opacity``; both spellings are accepted and mapped to the CheXpert
column name (:data:`CHEXLOCALIZE_NAMES`). The other nine names are CheXpert's column names.

RLE: COCO's compressed ``counts`` string is decoded here (:func:`coco_rle_counts`, the LEB128-like
6-bit code with deltas from the run two back that pycocotools' ``rleFrString`` reads); the runs
alternate 0s and 1s starting with 0s over the **column-major** flattened ``h x w`` mask. The
decoder is tested against pycocotools on random masks (``tests/unit/test_data_chexlocalize.py``).
It checks what pycocotools does not: every run is non-negative and the runs add up to exactly
``h * w``; anything else is a :class:`DataError` naming the file, CXR id and pathology.

Polygons (``gt_annotations_*``) are filled with OpenCV (``cv2.fillPoly`` plus the outline, as
CheXlocalize's PIL ``ImageDraw.polygon(outline=1, fill=1)``), vertices rounded to the nearest
pixel; the border may differ from CheXlocalize's rasterisation by one pixel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DataError

# CheXlocalize pathology name -> CheXpert column name
CHEXLOCALIZE_NAMES: dict[str, str] = {
    "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Lung Lesion": "Lung Lesion",
    "Airspace Opacity": "Lung Opacity",
    "Lung Opacity": "Lung Opacity",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Pleural Effusion",
    "Support Devices": "Support Devices",
}
# the 10 localized classes, as CheXpert column names
CHEXLOCALIZE_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(CHEXLOCALIZE_NAMES.values()))
# split -> (segmentations file, annotations file, CheXpert image folder)
CHEXLOCALIZE_FILES: dict[str, tuple[str, str, str]] = {
    "val-loc": ("gt_segmentations_val.json", "gt_annotations_val.json", "valid"),
    "test-loc": ("gt_segmentations_test.json", "gt_annotations_test.json", "test"),
}
_ID_RE = re.compile(r"^(patient\d+)_(study\d+)_(view\d+_(?:frontal|lateral))$")
_PATH_RE = re.compile(r"(patient\d+)/(study\d+)/(view\d+_(?:frontal|lateral))\.\w+$")


def cxr_id_parts(cxr_id: str, where: str) -> tuple[str, str, str]:
    """``patient64541_study1_view1_frontal`` -> ``("patient64541", "study1", "view1_frontal")``.

    Raises:
        DataError: the id does not have that form (naming ``where``).
    """
    m = _ID_RE.match(cxr_id)
    if m is None:
        raise DataError(
            f"{where}: CXR id {cxr_id!r} is not of the form patientNNNNN_studyN_viewN_frontal "
            "(or _lateral)"
        )
    return m.group(1), m.group(2), m.group(3)


def cxr_id_from_path(path: str) -> str | None:
    """The CXR id of a CheXpert CSV ``Path`` (``.../patient1/study1/view1_frontal.jpg``)."""
    m = _PATH_RE.search(path.replace("\\", "/"))
    return None if m is None else "_".join(m.groups())


def coco_rle_counts(counts: Any, where: str) -> np.ndarray:
    """Run lengths of a COCO RLE ``counts`` (compressed string, bytes or list of ints).

    Returns:
        ``int64`` ``[R]``: alternating runs of 0s and 1s, starting with 0s.

    Raises:
        DataError: not a string / list of ints, a truncated code or a negative run.
    """
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise DataError(f"{where}: RLE counts list must hold integers")
        out = np.asarray(counts, dtype=np.int64)
    else:
        if isinstance(counts, (bytes, bytearray)):
            counts = counts.decode("ascii", errors="replace")
        if not isinstance(counts, str):
            raise DataError(
                f"{where}: RLE counts must be a string or a list of integers, got "
                f"{type(counts).__name__}"
            )
        vals: list[int] = []
        code = counts.encode("ascii", errors="replace")
        p, n = 0, len(code)
        while p < n:
            x, k, more = 0, 0, True
            while more:
                if p >= n:
                    raise DataError(f"{where}: RLE counts string is truncated")
                c = code[p] - 48
                if not 0 <= c < 64:
                    raise DataError(f"{where}: RLE counts has a character outside '0'..'o'")
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and c & 0x10:
                    x -= 1 << (5 * k)
            if len(vals) > 2:
                x += vals[-2]
            vals.append(x)
        out = np.asarray(vals, dtype=np.int64)
    if out.size and int(out.min()) < 0:
        raise DataError(f"{where}: RLE has a negative run length ({int(out.min())})")
    return out


def mask_to_runs(mask: np.ndarray) -> np.ndarray:
    """Alternating 0/1 run lengths (starting with 0s) of a ``[h, w]`` mask, column-major."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    if flat.size == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).astype(np.int64)
    return np.concatenate([[0], runs]) if flat[0] else runs


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of a ``bool`` ``[h, w]`` mask
    (what pycocotools' ``mask.encode`` gives, counts decoded to ``str``, as CheXlocalize stores
    it)."""
    runs = [int(x) for x in mask_to_runs(mask)]
    chars: list[str] = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    h, w = np.shape(mask)
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def _size(v: Any, where: str, key: str) -> tuple[int, int]:
    ok = isinstance(v, (list, tuple)) and len(v) == 2
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
    if not ok:
        raise DataError(f"{where}: {key!r} must be [height, width] (positive integers), got {v!r}")
    return int(v[0]), int(v[1])


def runs_to_mask(runs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Paint alternating 0/1 runs (column-major) into a ``bool`` ``[h, w]`` mask."""
    h, w = size
    if runs.size <= 1:
        return np.zeros((h, w), dtype=bool)
    flat = np.repeat((np.arange(runs.size) % 2).astype(bool), runs)
    return flat.reshape(w, h).T


@dataclass(frozen=True)
class LocRegion:
    """One (CXR, pathology) ground truth in its original grid: RLE runs or polygons."""

    size: tuple[int, int]  # (h, w)
    runs: np.ndarray | None = None  # int64 [R], alternating 0/1 runs, column-major
    polygons: tuple[np.ndarray, ...] = ()  # float64 [V, 2] (x, y) vertices each

    @property
    def empty(self) -> bool:
        if self.runs is not None:
            return self.runs.size <= 1
        return not self.polygons

    def mask(self) -> np.ndarray:
        """``bool`` ``[h, w]``."""
        if self.runs is not None:
            return runs_to_mask(self.runs, self.size)
        m = np.zeros(self.size, dtype=np.uint8)
        pts = [np.rint(p).astype(np.int32).reshape(-1, 1, 2) for p in self.polygons]
        cv2.fillPoly(m, pts, 1)
        cv2.polylines(m, pts, True, 1)
        return m.astype(bool)


@dataclass(frozen=True)
class LocFile:
    """A parsed CheXlocalize ground-truth file.

    Attributes:
        path: the file read.
        ids: CXR ids in file order.
        regions: per CXR id, ``{CheXpert class: LocRegion}`` (classes absent from the file are
            absent here: empty).
        sizes: per CXR id, the original ``(h, w)``.
    """

    path: Path
    ids: list[str]
    regions: dict[str, dict[str, LocRegion]]
    sizes: dict[str, tuple[int, int]]


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, Mapping):
        raise DataError(f"{path}: expected a JSON object keyed by CXR id")
    return data


def _pathology(path: Path, cxr_id: str, name: str) -> str:
    if name not in CHEXLOCALIZE_NAMES:
        raise DataError(
            f"{path}: CXR {cxr_id!r} has unknown pathology {name!r}; allowed: "
            f"{', '.join(CHEXLOCALIZE_NAMES)}"
        )
    return CHEXLOCALIZE_NAMES[name]


def read_segmentations(path: Path) -> LocFile:
    """Parse ``gt_segmentations_*.json`` (every RLE decoded to runs and checked).

    Raises:
        DataError: invalid JSON, a bad CXR id, an unknown pathology, a missing ``size`` /
            ``counts``, an RLE whose runs do not add up to ``h * w`` (naming file, id, pathology).
    """
    data = _load_json(path)
    ids: list[str] = []
    regions: dict[str, dict[str, LocRegion]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for cxr_id, entry in data.items():
        cxr_id_parts(cxr_id, str(path))
        if not isinstance(entry, Mapping):
            raise DataError(f"{path}: CXR {cxr_id!r} must map pathologies to RLE objects")
        per: dict[str, LocRegion] = {}
        size0: tuple[int, int] | None = None
        for name, rle in entry.items():
            cls = _pathology(path, cxr_id, name)
            where = f"{path} CXR {cxr_id!r} pathology {name!r}"
            if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
                raise DataError(f"{where}: expected an RLE object with 'size' and 'counts'")
            size = _size(rle["size"], where, "size")
            runs = coco_rle_counts(rle["counts"], where)
            total = int(runs.sum())
            if total != size[0] * size[1]:
                raise DataError(
                    f"{where}: RLE covers {total} pixels but its size {list(size)} has "
                    f"{size[0] * size[1]}"
                )
            if size0 is not None and size != size0:
                raise DataError(f"{where}: size {list(size)} differs from {list(size0)}")
            size0 = size
            if cls in per:
                raise DataError(f"{where}: the pathology is given twice")
            per[cls] = LocRegion(size=size, runs=runs)
        if size0 is None:
            raise DataError(f"{path}: CXR {cxr_id!r} has no pathology entries")
        ids.append(cxr_id)
        regions[cxr_id] = per
        sizes[cxr_id] = size0
    return LocFile(path, ids, regions, sizes)


def read_annotations(path: Path) -> LocFile:
    """Parse ``gt_annotations_*.json`` (polygons, rasterised on demand).

    Raises:
        DataError: invalid JSON, a bad CXR id, a missing / bad ``img_size``, an unknown pathology
            or a contour that is not a list of ``[x, y]`` pairs of finite numbers.
    """
    data = _load_json(path)
    ids: list[str] = []
    regions: dict[str, dict[str, LocRegion]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for cxr_id, entry in data.items():
        cxr_id_parts(cxr_id, str(path))
        if not isinstance(entry, Mapping) or "img_size" not in entry:
            raise DataError(f"{path}: CXR {cxr_id!r} needs an 'img_size' [h, w]")
        size = _size(entry["img_size"], f"{path} CXR {cxr_id!r}", "img_size")
        per: dict[str, LocRegion] = {}
        for name, contours in entry.items():
            if name == "img_size":
                continue
            cls = _pathology(path, cxr_id, name)
            where = f"{path} CXR {cxr_id!r} pathology {name!r}"
            polys = []
            for j, c in enumerate(contours if isinstance(contours, Sequence) else [None]):
                try:
                    arr = np.asarray(c, dtype=np.float64)
                except (TypeError, ValueError):
                    arr = np.zeros((0,))
                if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
                    raise DataError(f"{where}: contour {j} is not a list of [x, y] numbers")
                polys.append(arr)
            if cls in per:
                raise DataError(f"{where}: the pathology is given twice")
            per[cls] = LocRegion(size=size, polygons=tuple(polys))
        ids.append(cxr_id)
        regions[cxr_id] = per
        sizes[cxr_id] = size
    return LocFile(path, ids, regions, sizes)
