"""NIH ChestX-ray14 (Wang et al. 2017) with wsolevaluation-style splits.

Files under ``root`` (compressed ``.gz`` / ``.zip`` variants are accepted):

* ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (the v2020 file wins when both are
  there). Quirks handled: the bracketed header columns split by pandas
  (``OriginalImage[Width``, ``Height]``, ...), the original file's trailing comma (an extra
  ``Unnamed: 11`` column, absent from v2020), ``|``-separated ``Finding Labels`` with
  ``No Finding`` for negatives.
* ``BBox_List_2017.csv`` (``Image Index,Finding Label,Bbox [x,y,w,h],,,``): 984 boxes on 880
  images, float ``(x, y, w, h)`` in the 1024-px film grid; its label ``Infiltrate`` is this
  package's ``Infiltration``. Needed for the ``*-loc`` splits only.
* ``train_val_list.txt`` / ``test_list.txt``: the official patient-wise split.
* The PNGs, found by walking ``root`` once, recursively (``images/``, ``images_001/images/``, ...).

Splits (``seed``, ``val_fraction`` and ``val_loc_per_class`` are options):

* ``train``: ``train_val_list`` minus the ``val`` patients. Image labels only.
* ``val``: the patients of ``train_val_list`` whose ``hash_unit(patient, seed) < val_fraction``
  (about 10 %, patient-disjoint from ``train``). Image labels, for AUROC.
* ``val-loc``: box images of ``test_list`` from a few patients, chosen so every box class has at
  least ``val_loc_per_class`` box images (rarest class first; patients with fewer box images and a
  smaller seeded hash first; never taking the last patient of a class away from ``test-loc``).
  All box images of a chosen patient go to ``val-loc``, so it is patient-disjoint from
  ``test-loc``. On the released file (726 patients) the default gives 37 images.
* ``test-loc``: the remaining box images of ``test_list``.
* ``test``: the whole official ``test_list`` (classification; it includes the box images).

Localization items carry every box of their image (classes outside ``data.classes`` dropped).
Images are resized plainly from the 1024-px films to ``image_size`` and boxes scaled by
``image_size / 1024`` (see :mod:`lesionsweep.data.images`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import (
    SPLITS,
    Option,
    RecordDataset,
    find_file,
    fraction,
    hash_unit,
    int_at_least,
    read_csv,
    read_id_list,
)
from .images import index_images

NIH_CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

NIH_OPTIONS: dict[str, Option] = {
    "seed": Option(0, int_at_least(0), "seed of the val / val-loc selection"),
    "val_fraction": Option(0.1, fraction(), "share of train_val_list patients held out as val"),
    "val_loc_per_class": Option(5, int_at_least(1), "min box images per class in val-loc"),
}


@dataclass(frozen=True)
class NihEntries:
    """Parsed ``Data_Entry_2017*.csv``.

    Attributes:
        ids: image file names (``00000001_000.png``), one per row.
        patients: patient ids as strings.
        labels: ``float32`` ``[N, 14]`` 0/1 in :data:`NIH_CLASSES` order.
        path: the file read.
    """

    ids: np.ndarray
    patients: np.ndarray
    labels: np.ndarray
    path: Path

    def row_of(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.ids.tolist())}


@dataclass(frozen=True)
class NihBoxes:
    """Parsed ``BBox_List_2017.csv``.

    Attributes:
        ids: image file name per box.
        classes: ``int64`` class index per box in :data:`NIH_CLASSES`.
        xyxy: ``float64`` ``[M, 4]`` ``(x0, y0, x1, y1)`` in the 1024-px grid (``x1 = x + w``).
        path: the file read.
    """

    ids: np.ndarray
    classes: np.ndarray
    xyxy: np.ndarray
    path: Path


def read_nih_entries(path: Path) -> NihEntries:
    """Parse ``Data_Entry_2017.csv`` / ``Data_Entry_2017_v2020.csv``.

    Raises:
        DataError: missing columns, empty / unknown labels or duplicate image ids (the message
            names the file, line and value).
    """
    df = read_csv(
        path,
        ["Image Index", "Finding Labels", "Patient ID"],
        index_col=False,
        dtype={"Image Index": str, "Finding Labels": str, "Patient ID": str},
    )
    ids = df["Image Index"].astype(str).str.strip()
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{path} line {i + 2}: duplicate Image Index {ids.iloc[i]!r}")
    labels = df["Finding Labels"]
    if labels.isna().any():
        i = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise DataError(f"{path} line {i + 2}: empty 'Finding Labels' (use 'No Finding')")
    exploded = labels.str.split("|").explode().str.strip()
    lookup = {c: i for i, c in enumerate(NIH_CLASSES)}
    lookup[NO_FINDING] = -1
    cls = exploded.map(lookup)
    if cls.isna().any():
        k = int(np.flatnonzero(cls.isna().to_numpy())[0])
        row = int(exploded.index[k])
        raise DataError(
            f"{path} line {row + 2}: unknown finding label {exploded.iloc[k]!r}; "
            f"allowed: {', '.join(NIH_CLASSES)}, {NO_FINDING}"
        )
    rows = exploded.index.to_numpy()
    cls_np = cls.to_numpy(dtype=np.int64)
    pos = cls_np >= 0
    y = np.zeros((len(df), len(NIH_CLASSES)), dtype=np.float32)
    y[rows[pos], cls_np[pos]] = 1.0
    patients = df["Patient ID"].astype(str).str.strip().to_numpy()
    return NihEntries(ids=ids.to_numpy(dtype=object), patients=patients, labels=y, path=path)


def read_nih_boxes(path: Path) -> NihBoxes:
    """Parse ``BBox_List_2017.csv`` (``x, y, w, h`` floats in the 1024-px grid).

    Raises:
        DataError: wrong columns, a non-numeric / non-positive box or an unknown label.
    """
    df = read_csv(path, ["Image Index", "Finding Label"], index_col=False)
    if df.shape[1] < 6:
        raise DataError(
            f"{path}: expected 'Image Index,Finding Label' followed by 4 box columns "
            f"(x, y, w, h); found columns: {', '.join(map(repr, df.columns))}"
        )
    import pandas as pd

    raw = df.iloc[:, 2:6].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(raw).all(axis=1) | (raw[:, 2] <= 0) | (raw[:, 3] <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path} line {i + 2}: bad box {df.iloc[i, 2:6].tolist()} (need finite x, y and "
            "positive w, h)"
        )
    names = df["Finding Label"].astype(str).str.strip().replace(BOX_LABEL_ALIASES)
    lookup = {c: i for i, c in enumerate(NIH_CLASSES)}
    cls = names.map(lookup)
    if cls.isna().any():
        i = int(np.flatnonzero(cls.isna().to_numpy())[0])
        raise DataError(
            f"{path} line {i + 2}: unknown box label {df['Finding Label'].iloc[i]!r}; allowed: "
            f"{', '.join(NIH_CLASSES)} (and 'Infiltrate' for Infiltration)"
        )
    xyxy = np.concatenate([raw[:, :2], raw[:, :2] + raw[:, 2:4]], axis=1)
    ids = df["Image Index"].astype(str).str.strip().to_numpy(dtype=object)
    return NihBoxes(ids=ids, classes=cls.to_numpy(dtype=np.int64), xyxy=xyxy, path=path)


def _list_rows(ids: Sequence[str], row_of: Mapping[str, int], path: Path) -> np.ndarray:
    rows = np.empty(len(ids), dtype=np.int64)
    for k, name in enumerate(ids):
        r = row_of.get(name)
        if r is None:
            raise DataError(f"{path} line {k + 1}: image {name!r} is not in the label file")
        rows[k] = r
    return rows


def select_val_loc(
    image_patients: np.ndarray, image_classes: np.ndarray, per_class: int, seed: int
) -> np.ndarray:
    """Pick a patient-disjoint localization validation subset of the box images.

    Args:
        image_patients: patient id per box image, ``[M]``.
        image_classes: ``bool`` ``[M, K]``, whether image ``m`` has a box of class ``k``.
        per_class: wanted number of box images per class.
        seed: seed of the patient order.

    Returns:
        ``bool`` ``[M]``: True for images in ``val-loc``. Classes are served rarest first; for a
        class still short of ``per_class``, candidate patients are taken in order of (number of
        box images, seeded hash), and all box images of a chosen patient join ``val-loc``. A
        patient whose images would leave ``test-loc`` without any box of some class is passed
        over, so a class with very few patients may get fewer than ``per_class`` images.
    """
    m, k = image_classes.shape
    patients, inv = np.unique(image_patients.astype(str), return_inverse=True)
    n_img = np.bincount(inv, minlength=len(patients))
    pat_classes = np.zeros((len(patients), k), dtype=np.int64)
    np.add.at(pat_classes, inv, image_classes.astype(np.int64))
    key = hash_unit(patients.tolist(), seed)
    chosen = np.zeros(len(patients), dtype=bool)
    counts = np.zeros(k, dtype=np.int64)
    totals = image_classes.sum(axis=0)
    for c in sorted(range(k), key=lambda c: (totals[c], c)):
        if totals[c] == 0:
            continue
        cand = np.flatnonzero((pat_classes[:, c] > 0) & ~chosen)
        cand = cand[np.lexsort((key[cand], n_img[cand]))]
        for p in cand:
            if counts[c] >= per_class:
                break
            after = counts + pat_classes[p]
            if np.any((totals > 0) & (after >= totals)):
                continue  # would leave test-loc without a box of some class
            chosen[p] = True
            counts = after
    return chosen[inv]


def nih_split_rows(
    entries: NihEntries,
    split: str,
    *,
    train_val: Sequence[str] | None,
    test: Sequence[str] | None,
    boxes: NihBoxes | None,
    seed: int,
    val_fraction: float,
    val_loc_per_class: int,
    list_paths: tuple[Path | None, Path | None] = (None, None),
) -> np.ndarray:
    """Row indices (into ``entries``, ascending) of one split; see the module docstring.

    ``train_val`` is needed for ``train`` / ``val``; ``test`` for ``test`` and the ``*-loc``
    splits; ``boxes`` for the ``*-loc`` splits.
    """
    row_of = entries.row_of()
    tv_path = list_paths[0] or Path(TRAIN_VAL_LIST)
    te_path = list_paths[1] or Path(TEST_LIST)
    tv_rows = _list_rows(train_val, row_of, tv_path) if train_val is not None else None
    te_rows = _list_rows(test, row_of, te_path) if test is not None else None
    if tv_rows is not None and te_rows is not None:
        both = np.intersect1d(tv_rows, te_rows)
        if both.size:
            raise DataError(
                f"{entries.ids[both[0]]!r} is in both {tv_path.name} and {te_path.name}; the "
                "official lists are disjoint"
            )
    if split in ("train", "val"):
        assert tv_rows is not None
        tv_rows = np.unique(tv_rows)
        is_val = hash_unit(entries.patients[tv_rows].tolist(), seed) < val_fraction
        return tv_rows[is_val] if split == "val" else tv_rows[~is_val]
    assert te_rows is not None
    te_rows = np.unique(te_rows)
    if split == "test":
        return te_rows
    assert boxes is not None
    box_rows = np.unique(_list_rows(boxes.ids.tolist(), row_of, boxes.path))
    box_rows = box_rows[np.isin(box_rows, te_rows)]
    if box_rows.size == 0:
        raise DataError(f"no box image of {boxes.path.name} is in {te_path.name}")
    image_classes = np.zeros((len(box_rows), len(NIH_CLASSES)), dtype=bool)
    pos = {int(r): j for j, r in enumerate(box_rows)}
    for r, c in zip(boxes.ids.tolist(), boxes.classes.tolist(), strict=True):
        j = pos.get(row_of[r])
        if j is not None:
            image_classes[j, c] = True
    in_val = select_val_loc(entries.patients[box_rows], image_classes, val_loc_per_class, seed)
    return box_rows[in_val] if split == "val-loc" else box_rows[~in_val]


class NIHDataset(RecordDataset):
    """NIH ChestX-ray14 images with the 14 image labels and, in ``*-loc`` splits, boxes.

    Items are :class:`~lesionsweep.data.types.Sample`: ``image`` ``uint8`` ``[1, S, S]``,
    ``target`` / ``target_mask`` ``float32`` ``[K]`` (mask all ones), ``boxes`` ``float32``
    ``[N, 5]`` ``(class, x0, y0, x1, y1)`` in continuous pixels of the ``S x S`` image (empty
    outside ``*-loc``), ``masks`` ``None``.

    Args:
        root: dataset folder (see the module docstring for the files).
        split: one of :data:`~lesionsweep.data.base.SPLITS`.
        image_size: side ``S`` of the delivered square images.
        classes: subset of :data:`NIH_CLASSES` in the wanted order (default: all 14).
        skip_bad_images: skip and record missing / unreadable images instead of raising.
        options: ``seed`` (0), ``val_fraction`` (0.1), ``val_loc_per_class`` (5).
    """

    name = "nih"
    title = "NIH"
    all_classes = NIH_CLASSES
    splits = SPLITS
    option_spec = NIH_OPTIONS

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 256,
        classes: Sequence[str] | None = None,
        skip_bad_images: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        root, opts = self._setup(root, split, image_size, classes, skip_bad_images, options)
        loc = self.info.has_boxes
        entries = read_nih_entries(find_file(root, ENTRY_FILES, "NIH label file"))
        train_val = test = None
        tv_path = te_path = None
        if split in ("train", "val"):
            tv_path = find_file(root, (TRAIN_VAL_LIST,), "NIH official split list")
            train_val = read_id_list(tv_path)
        else:
            te_path = find_file(root, (TEST_LIST,), "NIH official split list")
            test = read_id_list(te_path)
        boxes = read_nih_boxes(find_file(root, (BOX_FILE,), "NIH box file")) if loc else None
        rows = nih_split_rows(
            entries,
            split,
            train_val=train_val,
            test=test,
            boxes=boxes,
            seed=opts["seed"],
            val_fraction=opts["val_fraction"],
            val_loc_per_class=opts["val_loc_per_class"],
            list_paths=(tv_path, te_path),
        )
        index_map = index_images(root, (".png",))
        ids = entries.ids[rows].tolist()
        paths = [index_map.get(Path(n).stem) for n in ids]
        where = [f"{entries.path.name} line {r + 2}" for r in rows.tolist()]
        keep = self._finish(
            ids, paths, entries.labels[rows], np.ones_like(entries.labels[rows]), where
        )
        self.patients = entries.patients[rows[keep]].tolist()
        # boxes of the kept items, flat with offsets (full-class index, x0, y0, x1, y1)
        self._box_offsets = np.zeros(len(self.ids) + 1, dtype=np.int64)
        self._boxes = np.zeros((0, 5), dtype=np.float32)
        if boxes is not None:
            item_of = {name: j for j, name in enumerate(self.ids)}
            b_item = np.array([item_of.get(n, -1) for n in boxes.ids.tolist()], dtype=np.int64)
            sel = np.flatnonzero(b_item >= 0)
            order = sel[np.argsort(b_item[sel], kind="stable")]
            flat = np.concatenate(
                [boxes.classes[order, None].astype(np.float32), boxes.xyxy[order]], axis=1
            )
            self._boxes = flat.astype(np.float32)
            np.cumsum(np.bincount(b_item[sel], minlength=len(self.ids)), out=self._box_offsets[1:])

    def _annotations(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = self._box_offsets[i], self._box_offsets[i + 1]
        return self._boxes[a:b], None
