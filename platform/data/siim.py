"""SIIM-ACR pneumothorax segmentation challenge (2019), as a weakly supervised dataset.

Files under ``root`` (compressed variants accepted):

* ``train-rle.csv`` with columns ``ImageId`` and `` EncodedPixels`` (note the leading space in
  the official header). ``-1`` marks an image without pneumothorax; an image with several
  pneumothorax regions has several rows, united into one mask. The encoding is the challenge's
  relative, column-major run-length code over the 1024 x 1024 film (:mod:`lesionsweep.data.rle`;
  option ``rle: absolute`` reads standard 1-based absolute starts instead). Every row is parsed
  and range-checked when the dataset is built: a run beyond the mask is a :class:`DataError`
  naming the file and the line.
* ``<ImageId>.png`` or ``<ImageId>.dcm`` images anywhere under ``root`` (PNG wins when both
  exist). DICOM needs :mod:`pydicom`.

Class ``("pneumothorax",)``. Splits by ``hash_unit(ImageId, seed)``: ``test`` below
``test_fraction`` (0.2), ``val`` up to ``test_fraction + val_fraction`` (0.1), ``train`` the rest;
``val-loc`` holds the ``val`` images (the first ``val_loc_size`` in hash order when that option is
> 0) with masks and boxes, ``test-loc`` the ``test`` images with masks and boxes.
Masks are decoded on the 1024 grid and resized by area fraction > 0.5; boxes are the bounding
boxes of the 8-connected components of the 1024-px mask, scaled by ``image_size / 1024``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
from .images import DICOM_EXTENSIONS, index_images, mask_component_boxes
from .rle import RLE_MODES, RleTable, parse_rle_column, runs_to_mask

SIIM_CLASSES = ("pneumothorax",)
RLE_FILE = "train-rle.csv"
MASK_SIZE = 1024


def _rle_mode(v: Any) -> str:
    if v not in RLE_MODES:
        raise ValueError(f"allowed: {', '.join(RLE_MODES)}")
    return str(v)


SIIM_OPTIONS: dict[str, Option] = {
    "seed": Option(0, int_at_least(0), "seed of the hash split"),
    "val_fraction": Option(0.1, fraction(), "share of images in val / val-loc"),
    "test_fraction": Option(0.2, fraction(), "share of images in test / test-loc"),
    "val_loc_size": Option(0, int_at_least(0), "cap on val-loc images (0 = all of val)"),
    "rle": Option("relative", _rle_mode, "RLE flavour of train-rle.csv"),
}


def read_siim_rle(path: Path, mode: str = "relative") -> tuple[list[str], RleTable, np.ndarray]:
    """Parse ``train-rle.csv`` and group its rows by image.

    Returns:
        ``(image_ids, runs, first_line)``: unique image ids in order of first appearance; an
        :class:`RleTable` whose row ``i`` holds the united runs of image ``i`` (absolute 0-based
        column-major starts); the CSV line of each image's first row.

    Raises:
        DataError: wrong columns, malformed RLE or a run overrunning the 1024 x 1024 mask
            (naming the file and line).
    """
    df = read_csv(path, ["ImageId", "EncodedPixels"], index_col=False, dtype=str)
    ids = df["ImageId"].astype(str).str.strip()
    table = parse_rle_column(
        df["EncodedPixels"].tolist(),
        MASK_SIZE,
        MASK_SIZE,
        mode=mode,
        source=str(path),
        row_label="line",
        first_row_number=2,
    )
    codes, uniques = ids.factorize()
    n_img = len(uniques)
    pairs = np.diff(table.offsets)
    pair_img = np.repeat(codes, pairs)
    order = np.argsort(pair_img, kind="stable")
    offsets = np.zeros(n_img + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_img, minlength=n_img), out=offsets[1:])
    grouped = RleTable(starts=table.starts[order], lengths=table.lengths[order], offsets=offsets)
    _, first_row = np.unique(codes, return_index=True)  # codes follow first appearance
    return [str(u) for u in uniques], grouped, first_row.astype(np.int64) + 2


class SIIMDataset(RecordDataset):
    """SIIM-ACR pneumothorax: image label, and mask + component boxes in ``*-loc`` splits.

    Items: ``image`` ``uint8`` ``[1, S, S]``; ``target`` ``float32`` ``[1]``; in ``*-loc``
    splits ``masks`` ``bool`` ``[1, S, S]`` and ``boxes`` ``float32`` ``[N, 5]``
    ``(0, x0, y0, x1, y1)`` in continuous pixels of the ``S x S`` image; elsewhere empty boxes and
    ``masks=None``.

    Args:
        root, split, image_size, classes, skip_bad_images: as for
            :class:`~lesionsweep.data.nih.NIHDataset`.
        options: ``seed`` (0), ``val_fraction`` (0.1), ``test_fraction`` (0.2),
            ``val_loc_size`` (0 = all of val), ``rle`` (``relative``).
    """

    name = "siim"
    title = "SIIM"
    loc_has_masks = True
    all_classes = SIIM_CLASSES
    splits = SPLITS
    option_spec = SIIM_OPTIONS

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
        rle_path = find_file(root, (RLE_FILE,), "SIIM run-length file")
        image_ids, runs, first_line = read_siim_rle(rle_path, opts["rle"])
        sel = hash_split_rows(
            image_ids,
            split,
            seed=opts["seed"],
            val_fraction=opts["val_fraction"],
            test_fraction=opts["test_fraction"],
            val_loc_size=opts["val_loc_size"],
        )
        index_map = index_images(root, (".png", *DICOM_EXTENSIONS))
        ids = [image_ids[i] for i in sel]
        paths = [index_map.get(i) for i in ids]
        require_pydicom(paths, f"SIIM ({root})")
        counts = np.diff(runs.offsets)[sel]
        y = (counts > 0).astype(np.float32)[:, None]
        where = [f"{rle_path.name} line {first_line[i]}" for i in sel.tolist()]
        keep = self._finish(ids, paths, y, np.ones_like(y), where)
        self._runs = runs
        self._rows = sel[keep]

    def mask_native(self, i: int) -> np.ndarray:
        """The united 1024 x 1024 ``bool`` mask of item ``i``."""
        starts, lengths = self._runs.row(int(self._rows[i]))
        return runs_to_mask(starts, lengths, MASK_SIZE, MASK_SIZE)

    def _annotations(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        m = self.mask_native(i)
        return mask_component_boxes(m, 0), m[None]
