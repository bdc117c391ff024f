"""RSNA Pneumonia Detection Challenge (2018), as a weakly supervised dataset.

Files under ``root`` (compressed variants accepted):

* ``stage_2_train_labels.csv`` (or ``stage_1_train_labels.csv``) with columns
  ``patientId,x,y,width,height,Target``: one row per box for positives (``Target`` 1), one row
  with empty box fields for negatives (``Target`` 0). Boxes are ``(x, y, w, h)`` in the 1024-px
  film grid.
* ``<patientId>.png`` or ``<patientId>.dcm`` anywhere under ``root`` (PNG wins when both exist).

Class ``("pneumonia",)``. Splits by ``hash_unit(patientId, seed)`` exactly as SIIM's
(:mod:`lesionsweep.data.siim`): ``train`` / ``val`` / ``test`` with image labels, ``val-loc`` /
``test-loc`` the ``val`` / ``test`` images with their boxes. No masks.
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
    hash_split_rows,
    int_at_least,
    read_csv,
    require_pydicom,
)
from .images import DICOM_EXTENSIONS, index_images

RSNA_CLASSES = ("pneumonia",)
LABEL_FILES = ("stage_2_train_labels.csv", "stage_1_train_labels.csv")
RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")

RSNA_OPTIONS: dict[str, Option] = {
    "seed": Option(0, int_at_least(0), "seed of the hash split"),
    "val_fraction": Option(0.1, fraction(), "share of patients in val / val-loc"),
    "test_fraction": Option(0.2, fraction(), "share of patients in test / test-loc"),
    "val_loc_size": Option(0, int_at_least(0), "cap on val-loc images (0 = all of val)"),
}


@dataclass(frozen=True)
class RsnaLabels:
    """Parsed RSNA label file, grouped by patient.

    Attributes:
        ids: unique ``patientId`` in order of first appearance.
        target: ``float32`` ``[P]`` 0/1 per patient.
        box_offsets: ``int64`` ``[P + 1]``; boxes of patient ``p`` are
            ``xyxy[box_offsets[p]:box_offsets[p + 1]]``.
        xyxy: ``float32`` ``[M, 4]`` ``(x0, y0, x1, y1)`` in the 1024-px grid.
        first_line: CSV line of each patient's first row.
        path: the file read.
    """

    ids: list[str]
    target: np.ndarray
    box_offsets: np.ndarray
    xyxy: np.ndarray
    first_line: np.ndarray
    path: Path


def read_rsna_labels(path: Path) -> RsnaLabels:
    """Parse ``stage_2_train_labels.csv``.

    Raises:
        DataError: wrong columns; a ``Target`` other than 0/1; a positive row without a finite,
            positive-size box; a negative row with box values; a patient with both positive and
            negative rows (each names the file and line).
    """
    import pandas as pd

    df = read_csv(path, RSNA_COLUMNS, index_col=False, dtype={"patientId": str})
    tgt = pd.to_numeric(df["Target"], errors="coerce").to_numpy()
    bad = ~np.isin(tgt, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path} line {i + 2}: Target {df['Target'].iloc[i]} must be 0 or 1")
    box = df[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce").to_numpy()
    pos = tgt == 1
    ok_pos = np.isfinite(box).all(axis=1) & (box[:, 2] > 0) & (box[:, 3] > 0)
    bad_pos = np.flatnonzero(pos & ~ok_pos)
    if bad_pos.size:
        i = int(bad_pos[0])
        raise DataError(
            f"{path} line {i + 2}: Target 1 needs a box with finite x, y and positive width, "
            f"height; got {df.iloc[i, 1:5].tolist()}"
        )
    raw_fields = df[["x", "y", "width", "height"]]
    bad_neg = np.flatnonzero(~pos & raw_fields.notna().any(axis=1).to_numpy())
    if bad_neg.size:
        i = int(bad_neg[0])
        raise DataError(f"{path} line {i + 2}: Target 0 row has box values (expected empty)")
    ids = df["patientId"].astype(str).str.strip()
    codes, uniques = ids.factorize()
    n = len(uniques)
    n_pos = np.bincount(codes, weights=pos, minlength=n)
    n_all = np.bincount(codes, minlength=n)
    mixed = np.flatnonzero((n_pos > 0) & (n_pos < n_all))
    if mixed.size:
        i = int(np.flatnonzero(codes == mixed[0])[0])
        raise DataError(
            f"{path} line {i + 2}: patient {uniques[mixed[0]]!r} has both Target 0 and Target 1 "
            "rows"
        )
    sel = np.flatnonzero(pos)
    order = sel[np.argsort(codes[sel], kind="stable")]
    b = box[order]
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], axis=1).astype(np.float32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes[sel], minlength=n), out=offsets[1:])
    _, first = np.unique(codes, return_index=True)
    return RsnaLabels(
        ids=[str(u) for u in uniques],
        target=(n_pos > 0).astype(np.float32),
        box_offsets=offsets,
        xyxy=xyxy,
        first_line=first.astype(np.int64) + 2,
        path=path,
    )


class RSNADataset(RecordDataset):
    """RSNA pneumonia: image label, and boxes in ``*-loc`` splits.

    Items: ``image`` ``uint8`` ``[1, S, S]``; ``target`` ``float32`` ``[1]``; ``boxes``
    ``float32`` ``[N, 5]`` ``(0, x0, y0, x1, y1)`` in continuous pixels of the ``S x S`` image in
    ``*-loc`` splits (empty elsewhere); ``masks`` ``None``.

    Args:
        root, split, image_size, classes, skip_bad_images: as for
            :class:`~lesionsweep.data.nih.NIHDataset`.
        options: ``seed`` (0), ``val_fraction`` (0.1), ``test_fraction`` (0.2),
            ``val_loc_size`` (0 = all of val).
    """

    name = "rsna"
    title = "RSNA"
    all_classes = RSNA_CLASSES
    splits = SPLITS
    option_spec = RSNA_OPTIONS

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
        labels = read_rsna_labels(find_file(root, LABEL_FILES, "RSNA label file"))
        sel = hash_split_rows(
            labels.ids,
            split,
            seed=opts["seed"],
            val_fraction=opts["val_fraction"],
            test_fraction=opts["test_fraction"],
            val_loc_size=opts["val_loc_size"],
        )
        index_map = index_images(root, (".png", *DICOM_EXTENSIONS))
        ids = [labels.ids[i] for i in sel]
        paths = [index_map.get(i) for i in ids]
        require_pydicom(paths, f"RSNA ({root})")
        y = labels.target[sel][:, None]
        where = [f"{labels.path.name} line {labels.first_line[i]}" for i in sel.tolist()]
        keep = self._finish(ids, paths, y, np.ones_like(y), where)
        self._labels = labels
        self._rows = sel[keep]

    def _annotations(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        p = int(self._rows[i])
        a, b = self._labels.box_offsets[p], self._labels.box_offsets[p + 1]
        xyxy = self._labels.xyxy[a:b]
        out = np.zeros((xyxy.shape[0], 5), dtype=np.float32)
        out[:, 1:] = xyxy
        return out, None
