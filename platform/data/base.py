"""Shared machinery of the real-dataset loaders: splits, options, metadata files, the base class.

Split names (every dataset offers a subset, see each loader):

* ``train``: image labels only (weak supervision).
* ``val``: image labels, for AUROC / model selection by classification.
* ``val-loc``: a small localization-labelled split for hyperparameter search and model selection
  on localization (wsolevaluation's ``train-fullsup``).
* ``test-loc``: the localization test split, disjoint from ``val-loc``.
* ``test``: the classification test split, reachable only from the evaluate command.

Localization labels (boxes, masks) are delivered only in the ``*-loc`` splits; the other splits
return empty boxes and ``masks=None`` and their :class:`DatasetInfo` says ``has_boxes=False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, check_keys
from .images import (
    DICOM_EXTENSIONS,
    pydicom_available,
    read_image,
    resize_image,
    resize_mask,
    scale_boxes,
)
from .types import DatasetInfo, Sample, empty_boxes

SPLITS = ("train", "val", "val-loc", "test-loc", "test")
LOC_SPLITS = ("val-loc", "test-loc")
COMPRESSED_SUFFIXES = ("", ".gz", ".zip", ".bz2", ".xz")


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One dataset option: its default, a checker that returns the normalised value (or raises
    ``ValueError`` with what is allowed) and a one-line description."""

    default: Any
    check: Callable[[Any], Any]
    doc: str


def int_at_least(lo: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f"expected an integer >= {lo}")
        if int(v) < lo:
            raise ValueError(f"expected an integer >= {lo}")
        return int(v)

    return check


def fraction(lo_open: bool = True) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise ValueError("expected a number in (0, 1)")
        f = float(v)
        ok = (0.0 < f < 1.0) if lo_open else (0.0 <= f < 1.0)
        if not ok:
            raise ValueError("expected a number in (0, 1)" if lo_open else "expected [0, 1)")
        return f

    return check


def boolean(v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError("expected true or false")
    return bool(v)


def resolve_options(
    dataset: str, options: Mapping[str, Any] | None, spec: Mapping[str, Option]
) -> dict[str, Any]:
    """Fill defaults and validate ``options`` against ``spec``.

    Raises:
        DataError: an unknown option (naming it and the allowed ones) or a bad value.
    """
    options = dict(options or {})
    check_keys(
        options, spec, "data.options", "option", owner=f"dataset {dataset!r}", error=DataError
    )
    out: dict[str, Any] = {}
    for k, opt in spec.items():
        v = options.get(k, opt.default)
        try:
            out[k] = opt.check(v)
        except ValueError as e:
            raise DataError(f"data option {k}={v!r} for dataset {dataset!r}: {e}") from None
    return out


def check_split(dataset: str, split: str, available: Sequence[str]) -> None:
    """Raise :class:`DataError` when ``split`` is not one of ``available``."""
    if split not in available:
        kind = "unknown split" if split not in SPLITS else "split not available"
        raise DataError(f"{kind} {split!r} for dataset {dataset!r}; it has: {', '.join(available)}")


def select_classes(
    dataset: str, all_classes: Sequence[str], requested: Sequence[str] | None
) -> tuple[tuple[str, ...], np.ndarray]:
    """Resolve ``data.classes`` against a dataset's class list.

    Returns:
        ``(names, index)``: the selected names in the requested order and ``int64`` indices into
        ``all_classes``.
    """
    if requested is None:
        return tuple(all_classes), np.arange(len(all_classes), dtype=np.int64)
    if len(requested) == 0:
        raise DataError(f"data.classes for dataset {dataset!r} is empty")
    bad = [c for c in requested if c not in all_classes]
    if bad:
        raise DataError(
            f"unknown class(es) {', '.join(map(repr, bad))} for dataset {dataset!r}; "
            f"allowed: {', '.join(all_classes)}"
        )
    if len(set(requested)) != len(requested):
        raise DataError(f"data.classes for dataset {dataset!r} repeats a class: {list(requested)}")
    pos = {c: i for i, c in enumerate(all_classes)}
    return tuple(requested), np.array([pos[c] for c in requested], dtype=np.int64)


def hash_unit(keys: Sequence[object], seed: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in ``[0, 1)``, one per key.

    ``sha1(f"{seed}:{key}")`` read as a 64-bit integer, so a key's value does not depend on
    the other keys, the process, ``PYTHONHASHSEED`` or the platform. Used for splits: an id lands
    in the same split whichever subset of the metadata is loaded.
    """
    out = np.empty(len(keys), dtype=np.float64)
    prefix = f"{seed}:".encode()
    for i, k in enumerate(keys):
        h = hashlib.sha1(prefix + str(k).encode()).digest()
        out[i] = int.from_bytes(h[:8], "big") / 2.0**64
    return out


def hash_split_rows(
    keys: Sequence[object],
    split: str,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    val_loc_size: int = 0,
) -> np.ndarray:
    """Ascending indices of the keys in ``split`` under a hash split.

    With ``u = hash_unit(key, seed)``: ``test`` / ``test-loc`` take ``u < test_fraction``,
    ``val`` / ``val-loc`` take ``test_fraction <= u < test_fraction + val_fraction``, ``train``
    the rest. ``val_loc_size > 0`` keeps only that many ``val-loc`` keys (smallest ``u`` first).
    """
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    u = hash_unit(keys, seed)
    part = np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))
    want = {"train": 0, "val": 1, "val-loc": 1, "test": 2, "test-loc": 2}[split]
    sel = np.flatnonzero(part == want)
    if split == "val-loc" and val_loc_size > 0:
        sel = np.sort(sel[np.argsort(u[sel], kind="stable")][:val_loc_size])
    return sel


def require_pydicom(paths: Sequence[Path | None], what: str) -> None:
    """Raise :class:`DataError` when some path is a DICOM file and pydicom is missing."""
    if any(p is not None and p.suffix.lower() in DICOM_EXTENSIONS for p in paths):
        if not pydicom_available():
            raise DataError(
                f"{what} images are DICOM (.dcm) but pydicom is not installed; "
                "`pip install 'lesionsweep[dicom]'` (or `pip install pydicom`), or convert them "
                "to PNG"
            )


# ----------------------------------------------------------------------------- metadata files


def find_file(root: Path, names: Sequence[str], what: str, subdirs: Sequence[str] = ("",)) -> Path:
    """Find the first existing ``name`` (or a ``.gz`` / ``.zip`` / ``.bz2`` / ``.xz`` variant).

    Raises:
        DataError: nothing found; the message lists every name tried.
    """
    tried = []
    for sub in subdirs:
        base = root / sub if sub else root
        for name in names:
            for suf in COMPRESSED_SUFFIXES:
                p = base / (name + suf)
                tried.append(str(p.relative_to(root)) if sub else p.name)
                if p.is_file():
                    return p
    raise DataError(
        f"{what} not found under {root}; looked for: {', '.join(tried[:12])}"
        + (" ..." if len(tried) > 12 else "")
    )


def read_csv(path: Path, required: Sequence[str], **kwargs: Any) -> Any:
    """Read a CSV with pandas (compressed variants too) and check its columns.

    Column names are stripped of surrounding whitespace (SIIM's ``" EncodedPixels"``).

    Raises:
        DataError: unreadable file or missing columns (naming the file, the missing columns and
            the columns found).
    """
    import pandas as pd

    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise DataError(f"metadata file not found: {path}") from None
    except Exception as e:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError...
        raise DataError(f"{path}: cannot parse CSV: {type(e).__name__}: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"found: {', '.join(map(repr, df.columns))}"
        )
    return df


def read_id_list(path: Path) -> list[str]:
    """Read a one-id-per-line list file (blank lines ignored)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- base dataset


class RecordDataset(Dataset[Sample]):
    """Base class of the file-backed datasets: one record per item, decoded on access.

    Subclasses set, in ``__init__`` and through :meth:`_finish`: ``ids`` (``list[str]``),
    ``paths`` (``list[Path]``), ``targets`` (``float32`` ``[N, K]``), ``target_mask``
    (``float32`` ``[N, K]``) and override :meth:`_annotations` for localization splits.

    Attributes:
        info: :class:`DatasetInfo` of this split (``has_boxes`` / ``has_masks`` true only in
            localization splits of datasets that have them).
        split: the split name.
        options: the resolved dataset options (defaults filled in).
        skipped: ``(path, reason)`` of every image skipped because ``skip_bad_images`` was set:
            missing files at construction, undecodable ones when first read. Files that fail
            inside DataLoader worker processes are recorded in those processes only; build a cache
            (:func:`lesionsweep.data.cache.build_cache`) to get a complete list.
    """

    name = "base"
    all_classes: tuple[str, ...] = ()
    splits: tuple[str, ...] = SPLITS

    @classmethod
    def offered_splits(cls, root: str | Path | None, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The splits this dataset offers under ``root`` with resolved ``options`` (no decoding).

        :attr:`splits` by default; a dataset whose localization ground truth is an optional
        download (CheXpert's CheXlocalize files) offers its localization splits only when the
        files are there.
        """
        return cls.splits

    option_spec: Mapping[str, Option] = {}
    native_size = 1024.0  # side of the square grid annotations are given in
    title = "base"  # display name in messages ("NIH")
    loc_has_boxes = True  # ``*-loc`` splits deliver boxes
    loc_has_masks = False  # ``*-loc`` splits deliver masks
    default_classes: tuple[str, ...] | None = None  # selected when classes=None (None: all)

    def __init__(
        self,
        *,
        split: str,
        image_size: int,
        classes: tuple[str, ...],
        class_index: np.ndarray,
        options: dict[str, Any],
        skip_bad_images: bool,
        has_boxes: bool,
        has_masks: bool,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise DataError(f"image_size must be an integer >= 8, got {image_size!r}")
        self.split = split
        self.image_size = int(image_size)
        self.class_index = class_index
        self.options = options
        self.skip_bad_images = bool(skip_bad_images)
        self.info = DatasetInfo(
            name=self.name,
            classes=classes,
            has_boxes=has_boxes,
            has_masks=has_masks,
            image_size=self.image_size,
        )
        # remap full-class index -> selected index (-1: not selected)
        self._class_remap = np.full(len(self.all_classes), -1, np.int64)
        self._class_remap[class_index] = np.arange(len(class_index))
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        self.ids: list[str] = []
        self.paths: list[Path] = []
        self.where: list[str] = []  # per item: metadata file and line it comes from
        self.targets = np.zeros((0, len(classes)), np.float32)
        self.target_mask = np.zeros((0, len(classes)), np.float32)

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate ``options`` against :attr:`option_spec` and fill in defaults (no file
        access). Raises :class:`DataError` naming an unknown option and the allowed ones."""
        opts = resolve_options(cls.name, options, cls.option_spec)
        if "test_fraction" in opts and opts["val_fraction"] + opts["test_fraction"] >= 1.0:
            raise DataError(
                f"{cls.name}: options val_fraction + test_fraction must be < 1, got "
                f"{opts['val_fraction']} + {opts['test_fraction']}"
            )
        return opts

    # -- construction helpers
    def _setup(
        self,
        root: str | Path,
        split: str,
        image_size: int,
        classes: Sequence[str] | None,
        skip_bad_images: bool,
        options: Mapping[str, Any] | None,
    ) -> tuple[Path, dict[str, Any]]:
        """Shared constructor prologue of the file-backed datasets.

        Checks ``split`` against :attr:`splits`, resolves ``options``, selects ``classes`` (or
        :attr:`default_classes`, or all of :attr:`all_classes`, when ``None``), runs
        :meth:`RecordDataset.__init__` (boxes / masks only in :data:`LOC_SPLITS`, as
        :attr:`loc_has_boxes` / :attr:`loc_has_masks` allow) and checks that ``root`` is a
        folder, storing it as ``self.root``.

        Args:
            root, split, image_size, classes, skip_bad_images, options: the subclass's
                constructor arguments.

        Returns:
            ``(root, options)``: the root as a :class:`~pathlib.Path` and the resolved options.

        Raises:
            DataError: unknown split, bad option / class / image size, or missing root folder.
        """
        check_split(self.name, split, self.splits)
        opts = self.resolve_options(options)
        if classes is None:
            classes = self.default_classes
        names, index = select_classes(self.name, self.all_classes, classes)
        loc = split in LOC_SPLITS
        RecordDataset.__init__(
            self,
            split=split,
            image_size=image_size,
            classes=names,
            class_index=index,
            options=opts,
            skip_bad_images=skip_bad_images,
            has_boxes=loc and self.loc_has_boxes,
            has_masks=loc and self.loc_has_masks,
        )
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{self.title} root folder not found: {root}")
        self.root = root
        return root, opts

    def _finish(
        self,
        ids: Sequence[str],
        paths: Sequence[Path | None],
        targets_full: np.ndarray,
        mask_full: np.ndarray,
        where: Sequence[str],
    ) -> np.ndarray:
        """Drop (or fail on) items whose image file is missing, select classes, store records.

        Args:
            ids, paths: per candidate item; ``None`` path = not found.
            targets_full, mask_full: ``float32`` ``[N, K_all]`` labels over all classes.
            where: per item, where it comes from (``"file.csv line 7"``) for error messages.

        Returns:
            ``int64`` indices of the kept candidates (subclasses use them to select their own
            per-item arrays).
        """
        missing = [i for i, p in enumerate(paths) if p is None]
        if missing:
            if not self.skip_bad_images:
                i = missing[0]
                raise DataError(
                    f"{self.name} {self.split}: image for {ids[i]!r} ({where[i]}) not found under "
                    f"the dataset root; {len(missing)} of {len(ids)} images of this split are "
                    "missing (set data.skip_bad_images to skip them)"
                )
            for i in missing:
                self.skipped.append((str(ids[i]), f"image file not found ({where[i]})"))
        keep = np.array([i for i, p in enumerate(paths) if p is not None], dtype=np.int64)
        self.where = [str(where[i]) for i in keep]
        self.ids = [str(ids[i]) for i in keep]
        self.paths = [paths[i] for i in keep]
        self.targets = np.ascontiguousarray(targets_full[keep][:, self.class_index], np.float32)
        self.target_mask = np.ascontiguousarray(mask_full[keep][:, self.class_index], np.float32)
        return keep

    # -- per-item annotations (native grid); overridden by datasets with boxes / masks
    def _annotations(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Boxes ``float32`` ``[N, 5]`` (full-class index, x0, y0, x1, y1) in the native grid and
        an optional ``bool`` mask ``[K_all, H, W]`` in the native grid, for item ``i``."""
        return np.zeros((0, 5), np.float32), None

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Sample:
        """Decode item ``i`` (no skipping). Raises :class:`DataError` on an unreadable image."""
        size = self.image_size
        try:
            img = resize_image(read_image(self.paths[i]), size)
        except DataError as e:
            raise DataError(f"{e} (item {self.ids[i]!r}, {self.where[i]})") from None
        boxes_t = empty_boxes()
        masks_t = None
        if self.info.has_boxes or self.info.has_masks:
            boxes, masks = self._annotations(i)
            if boxes.shape[0]:
                cls = self._class_remap[boxes[:, 0].astype(np.int64)]
                boxes = boxes[cls >= 0].copy()
                boxes[:, 0] = cls[cls >= 0]
                boxes_t = torch.from_numpy(scale_boxes(boxes, self.native_size, size))
            if self.info.has_masks:
                if masks is None:
                    sel = np.zeros((len(self.class_index), size, size), dtype=bool)
                else:
                    sel = resize_mask(masks[self.class_index], size)
                masks_t = torch.from_numpy(np.ascontiguousarray(sel))
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(img)[None]),
            target=torch.from_numpy(self.targets[i].copy()),
            boxes=boxes_t,
            masks=masks_t,
            target_mask=torch.from_numpy(self.target_mask[i].copy()),
            id=self.ids[i],
            meta={"path": str(self.paths[i])},
        )

    def __getitem__(self, i: int) -> Sample:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} {self.split} ({n} items)")
        if not self.skip_bad_images:
            return self.load(i)
        # skip_bad_images: an unreadable image is recorded once and the next readable item is
        # returned in its place (the cache builder drops such items instead).
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            try:
                return self.load(j)
            except DataError as e:
                self._bad.add(j)
                self.skipped.append((str(self.paths[j]), str(e)))
        raise DataError(f"{self.name} {self.split}: none of the {n} images could be read")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, classes={len(self.info.classes)})"
        )
