"""A preprocessed on-disk cache: decode and resize a dataset once, then read it at memory speed.

Layout of a cache folder (all arrays plain ``.npy``, readable without pickle)::

    manifest.json                 format, version, dataset info, image_size, source, splits
    <split>/images.npy            uint8   [N, 1, S, S]   (opened with mmap_mode="r")
    <split>/targets.npy           float32 [N, K]
    <split>/target_mask.npy       float32 [N, K]
    <split>/boxes.npy             float32 [M, 5]  (class, x0, y0, x1, y1), continuous pixels of S
    <split>/box_offsets.npy       int64   [N + 1] boxes of item i: boxes[off[i]:off[i + 1]]
    <split>/masks.npy             uint8   [N, K, ceil(S*S/8)]  bit-packed (np.packbits of the
                                          row-major S x S plane); only in splits with masks
    <split>/ids.npy               unicode [N]
    <split>/confounder.npy        uint8   [N, ceil(S*S/8)]  bit-packed shortcut-confounder masks
                                          (the phantom's tube) where items carry one

The cache is built in a temporary folder next to ``out_dir`` and renamed onto it only when every
split and the manifest are written, so a crash never leaves a half cache under ``out_dir``.
Items whose image cannot be read are dropped and listed in the manifest (with
``skip_bad_images``) or abort the build (without).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..errors import DataError
from ..fileio import atomic_write_text
from .sources import available_splits, build_source_dataset, resolved_options
from .types import DatasetInfo, Sample, SplitDataset, empty_boxes

CACHE_FORMAT = "lesionsweep-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
_HEADER_BYTES = 128  # fixed .npy header size (v1.0) of the streamed arrays


# ----------------------------------------------------------------------------- writing


class _NpyStreamWriter:
    """Append fixed-shape items to a ``.npy`` file whose length is known only at the end.

    A 128-byte header is reserved, items are written sequentially, and :meth:`close` writes the
    real header (``shape = (count, *item_shape)``). The result is an ordinary ``.npy`` file.
    """

    def __init__(self, path: Path, dtype: np.dtype[Any], item_shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.item_shape = item_shape
        self.count = 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._f.write(b"\0" * _HEADER_BYTES)

    def append(self, item: np.ndarray) -> None:
        a = np.ascontiguousarray(item, dtype=self.dtype)
        if a.shape != self.item_shape:
            raise DataError(f"{self.path}: item shape {a.shape} != {self.item_shape}")
        self._f.write(a.tobytes())
        self.count += 1

    def close(self) -> None:
        descr = np.lib.format.dtype_to_descr(self.dtype)
        shape = (self.count, *self.item_shape)
        header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        room = _HEADER_BYTES - 10
        if len(header) + 1 > room:
            raise DataError(f"{self.path}: .npy header too long for shape {shape}")
        header = header + " " * (room - len(header) - 1) + "\n"
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + header.encode("latin1"))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        self._f.close()


@dataclasses.dataclass
class _Item:
    """What a build keeps of a :class:`Sample`, as numpy arrays: a worker hands these over
    through its pipe in one message, where torch tensors cost a shared-memory segment each
    (handing over 256 px phantom items from 2 workers: 1.3-3x the items/s of tensors)."""

    image: np.ndarray
    target: np.ndarray
    target_mask: np.ndarray | None
    boxes: np.ndarray
    masks: np.ndarray | None
    id: str
    confounder: np.ndarray | None

    @classmethod
    def of(cls, s: Sample) -> _Item:
        def arr(t: Any) -> Any:
            return None if t is None else t.numpy()

        return cls(
            arr(s.image),
            arr(s.target),
            arr(s.target_mask),
            arr(s.boxes),
            arr(s.masks),
            s.id,
            arr(s.confounder),
        )


class _Indexed(Dataset[tuple[int, Any, str, str]]):
    """Wraps a dataset so a worker returns ``(i, item, "", "")`` or ``(i, None, path, why)``."""

    def __init__(self, ds: SplitDataset, catch: bool) -> None:
        self.ds = ds
        self.catch = catch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, Any, str, str]:
        load = getattr(self.ds, "load", None)
        try:
            s = load(i) if load is not None else self.ds[i]
        except DataError as e:
            if not self.catch:
                raise
            paths = getattr(self.ds, "paths", None)
            return i, None, str(paths[i]) if paths is not None else str(i), str(e)
        return i, _Item.of(s), "", ""


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _iterate(ds: SplitDataset, catch: bool, workers: int) -> Iterator[tuple[int, Any, str, str]]:
    wrapped = _Indexed(ds, catch)
    if workers <= 0:
        for i in range(len(wrapped)):
            yield wrapped[i]
        return
    loader = DataLoader(
        wrapped, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_first
    )
    yield from loader


#: ``progress(split, done, total)``: called after every item a build reads (``done`` counts
#: written and skipped items of ``split``, of ``total``)
Progress = Callable[[str, int, int], None]


def _write_split(
    ds: SplitDataset,
    folder: Path,
    info: DatasetInfo,
    catch: bool,
    workers: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    s, k = info.image_size, info.num_classes
    n = len(ds)
    n_bytes = (s * s + 7) // 8
    img_w = _NpyStreamWriter(folder / "images.npy", np.dtype(np.uint8), (1, s, s))
    mask_w = (
        _NpyStreamWriter(folder / "masks.npy", np.dtype(np.uint8), (k, n_bytes))
        if info.has_masks
        else None
    )
    conf_w: _NpyStreamWriter | None = None  # opened at the first item with a confounder mask
    targets = np.zeros((n, k), np.float32)
    tmask = np.ones((n, k), np.float32)
    boxes: list[np.ndarray] = []
    counts: list[int] = []
    ids: list[str] = []
    skipped: list[list[str]] = [list(map(str, x)) for x in getattr(ds, "skipped", [])]
    j = 0
    split = folder.name
    try:
        for done, (i, smp, path, why) in enumerate(_iterate(ds, catch, workers), 1):
            if progress is not None:
                progress(split, done, n)
            if smp is None:
                skipped.append([path, why])
                continue
            img = smp.image
            if img.shape != (1, s, s) or img.dtype != np.uint8:
                raise DataError(
                    f"{info.name} item {i}: image {tuple(img.shape)} {img.dtype}, expected "
                    f"uint8 (1, {s}, {s})"
                )
            img_w.append(img)
            targets[j] = smp.target
            if smp.target_mask is not None:
                tmask[j] = smp.target_mask
            b = smp.boxes.reshape(-1, 5).astype(np.float32)
            boxes.append(b)
            counts.append(b.shape[0])
            ids.append(str(smp.id) if smp.id else str(i))
            if mask_w is not None:
                m = np.zeros((k, s, s), bool) if smp.masks is None else smp.masks
                mask_w.append(np.packbits(m.reshape(k, s * s).astype(bool), axis=1))
            if smp.confounder is not None and conf_w is None:
                conf_w = _NpyStreamWriter(folder / "confounder.npy", np.dtype(np.uint8), (n_bytes,))
                for _ in range(j):  # earlier items had none
                    conf_w.append(np.zeros(n_bytes, np.uint8))
            if conf_w is not None:
                c = np.zeros((s, s), bool) if smp.confounder is None else smp.confounder
                conf_w.append(np.packbits(c.reshape(s * s).astype(bool)))
            j += 1
    except BaseException:
        for w in (img_w, mask_w, conf_w):
            if w is not None:
                w.abort()
        raise
    for w in (img_w, mask_w, conf_w):
        if w is not None:
            w.close()
    np.save(folder / "targets.npy", targets[:j])
    np.save(folder / "target_mask.npy", tmask[:j])
    flat = np.concatenate(boxes, 0) if boxes else np.zeros((0, 5), np.float32)
    np.save(folder / "boxes.npy", flat.astype(np.float32))
    offsets = np.zeros(j + 1, np.int64)
    np.cumsum(np.asarray(counts, np.int64), out=offsets[1:])
    np.save(folder / "box_offsets.npy", offsets)
    np.save(folder / "ids.npy", np.asarray(ids, dtype=str) if ids else np.zeros(0, "<U1"))
    return {
        "num_items": j,
        "num_boxes": int(flat.shape[0]),
        "has_boxes": info.has_boxes,
        "has_masks": info.has_masks,
        "loc_classes": None if info.loc_classes is None else list(info.loc_classes),
        "has_confounder": conf_w is not None,
        "confounder_class": info.confounder_class,
        "skipped": skipped,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if hasattr(v, "items"):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def build_cache(
    cfg: DataConfig,
    out_dir: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
    skip_bad_images: bool | None = None,
    *,
    overwrite: bool = False,
    num_workers: int | None = None,
    progress: Progress | None = None,
    key: str | None = None,
) -> Path:
    """Decode and resize the dataset of ``cfg`` once into a cache folder.

    Args:
        cfg: the data config (``cache`` is ignored: the source files are read).
        out_dir: cache folder to create.
        splits: splits to write (default: every split the dataset has).
        skip_bad_images: drop unreadable images and list them in the manifest instead of
            failing (default: ``cfg.skip_bad_images``).
        overwrite: replace an existing ``out_dir`` (the old cache stays intact until the new one
            is complete).
        num_workers: decoding processes (default ``cfg.num_workers``; 0 = this process).
        progress: called after every item read (see :data:`Progress`).
        key: the data-config key of a cache store entry (:mod:`.cache_store`), recorded in
            the manifest as ``key``.

    Returns:
        The cache folder.

    Raises:
        DataError: ``out_dir`` exists (without ``overwrite``), an unknown split, or any loader
            error (missing files, unreadable image without ``skip_bad_images``). Nothing is left
            under ``out_dir`` on failure.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise DataError(f"cache folder {out} already exists (pass overwrite=True to replace it)")
    have = available_splits(cfg.dataset)
    splits = tuple(have if splits is None else splits)
    bad = [s for s in splits if s not in have]
    if bad:
        raise DataError(
            f"split(s) {', '.join(map(repr, bad))} not available for dataset {cfg.dataset!r}; "
            f"it has: {', '.join(have)}"
        )
    skip = cfg.skip_bad_images if skip_bad_images is None else bool(skip_bad_images)
    workers = cfg.num_workers if num_workers is None else int(num_workers)
    src = dataclasses.replace(cfg, cache=None, skip_bad_images=skip)
    options = resolved_options(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        split_meta: dict[str, Any] = {}
        info0: DatasetInfo | None = None
        for split in splits:
            ds = build_source_dataset(src, split)
            info: DatasetInfo = ds.info
            if info.image_size != cfg.image_size:
                raise DataError(f"{cfg.dataset} {split}: delivered size {info.image_size}")
            if info0 is not None and info.classes != info0.classes:
                raise DataError(f"{cfg.dataset}: classes differ between splits")
            info0 = info
            split_meta[split] = _write_split(ds, tmp / split, info, skip, workers, progress)
        assert info0 is not None
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "dataset": {"name": info0.name, "classes": list(info0.classes)},
            "image_size": int(cfg.image_size),
            "source": {
                "dataset": cfg.dataset,
                "root": cfg.root,
                "classes": list(cfg.classes) if cfg.classes is not None else None,
                "options": _jsonable(options),
                "skip_bad_images": skip,
            },
            "splits": split_meta,
            "created_unix": time.time(),
        }
        if key is not None:
            manifest["key"] = key
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        os.chmod(tmp / MANIFEST, 0o644)  # mkstemp / mkdtemp create owner-only files
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "cache")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- reading


def read_manifest(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a cache's ``manifest.json``; :class:`DataError` when missing or corrupt."""
    path = Path(cache_dir) / MANIFEST
    if not Path(cache_dir).is_dir():
        raise DataError(f"cache folder not found: {cache_dir}")
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {cache_dir} is not a complete cache") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: corrupt cache manifest: {e}") from None
    if not isinstance(m, dict) or m.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: not a {CACHE_FORMAT} manifest")
    if m.get("version") != CACHE_VERSION:
        raise DataError(
            f"{path}: cache version {m.get('version')!r}, this code reads version {CACHE_VERSION}; "
            "rebuild the cache"
        )
    for key in ("dataset", "image_size", "source", "splits"):
        if key not in m:
            raise DataError(f"{path}: corrupt cache manifest (no {key!r})")
    return m


class CachedDataset(Dataset[Sample]):
    """One split of a cache built by :func:`build_cache`.

    Items are :class:`Sample` exactly as the source dataset delivered them (``image`` ``uint8``
    ``[1, S, S]``; ``target`` / ``target_mask`` ``float32`` ``[K]``; ``boxes`` ``float32``
    ``[N, 5]`` in continuous pixel coordinates of the ``S x S`` image; ``masks`` ``bool``
    ``[K, S, S]`` in splits with masks, else ``None``). Images are memory-mapped; a copy of one
    image is made per item. Safe to use with DataLoader workers (memory maps are reopened in each
    process, never pickled).

    Args:
        cache_dir: the cache folder.
        split: one of the splits in the cache.
        classes: optional subset of the cache's classes (reorders / selects targets, masks and
            boxes).

    Attributes:
        info, ids, skipped (``(path, reason)`` recorded at build time), manifest.

    Raises:
        DataError: missing / corrupt cache, a split not in the cache (listing those that are),
            an unknown class.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        split: str,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        splits = self.manifest["splits"]
        if split not in splits:
            raise DataError(
                f"split {split!r} is not in the cache {self.cache_dir}; it has: {', '.join(splits)}"
            )
        self.split = split
        meta = splits[split]
        self.size = int(self.manifest["image_size"])
        all_classes = tuple(self.manifest["dataset"]["classes"])
        if classes is None:
            names = all_classes
        else:
            bad = [c for c in classes if c not in all_classes]
            if bad:
                raise DataError(
                    f"class(es) {bad} not in the cache {self.cache_dir}; it has: "
                    f"{', '.join(all_classes)}"
                )
            names = tuple(classes)
        self.class_index = np.array([all_classes.index(c) for c in names], dtype=np.int64)
        self._remap = np.full(len(all_classes), -1, np.int64)
        self._remap[self.class_index] = np.arange(len(names))
        self._k_all = len(all_classes)
        self.info = DatasetInfo(
            name=str(self.manifest["dataset"]["name"]),
            classes=names,
            has_boxes=bool(meta["has_boxes"]),
            has_masks=bool(meta["has_masks"]),
            image_size=self.size,
            # optional (absent in older caches: every class localized)
            loc_classes=(
                None
                if meta.get("loc_classes") is None
                else tuple(c for c in names if c in meta["loc_classes"])
            ),
            # optional; like the loaders, named only when that class is selected
            confounder_class=conf if (conf := meta.get("confounder_class")) in names else None,
        )
        self.skipped = [tuple(x) for x in meta.get("skipped", [])]
        self._n = int(meta["num_items"])
        folder = self.cache_dir / split
        self.targets = self._load(folder / "targets.npy", np.float32, (self._n, self._k_all))
        self.target_mask = self._load(
            folder / "target_mask.npy", np.float32, (self._n, self._k_all)
        )
        self.targets = np.ascontiguousarray(self.targets[:, self.class_index])
        self.target_mask = np.ascontiguousarray(self.target_mask[:, self.class_index])
        self.box_offsets = self._load(folder / "box_offsets.npy", np.int64, (self._n + 1,))
        self.boxes = self._load(folder / "boxes.npy", np.float32, None)
        if (
            self.boxes.ndim != 2
            or self.boxes.shape[1] != 5
            or self.box_offsets[0] != 0
            or self.box_offsets[-1] != self.boxes.shape[0]
            or np.any(np.diff(self.box_offsets) < 0)
        ):
            raise DataError(f"{folder}: corrupt cache (boxes and box_offsets disagree)")
        ids = self._load(folder / "ids.npy", None, (self._n,))
        self.ids = [str(x) for x in ids.tolist()]
        self._folder = folder
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self._has_confounder = bool(meta.get("has_confounder", False))
        self._confounder: np.ndarray | None = None
        self._open()  # validate the memory-mapped arrays now

    @staticmethod
    def _load(
        path: Path, dtype: Any, shape: tuple[int, ...] | None, mmap: bool = False
    ) -> np.ndarray:
        try:
            a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"corrupt cache: {path} is missing") from None
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"corrupt cache: cannot read {path}: {e}") from None
        if dtype is not None and a.dtype != np.dtype(dtype):
            raise DataError(
                f"corrupt cache: {path} has dtype {a.dtype}, expected {np.dtype(dtype)}"
            )
        if shape is not None and tuple(a.shape) != shape:
            raise DataError(f"corrupt cache: {path} has shape {a.shape}, expected {shape}")
        return a

    def _open(self) -> None:
        s = self.size
        self._images = self._load(
            self._folder / "images.npy", np.uint8, (self._n, 1, s, s), mmap=True
        )
        if self.info.has_masks:
            self._masks = self._load(
                self._folder / "masks.npy",
                np.uint8,
                (self._n, self._k_all, (s * s + 7) // 8),
                mmap=True,
            )
        if self._has_confounder:
            self._confounder = self._load(
                self._folder / "confounder.npy", np.uint8, (self._n, (s * s + 7) // 8), mmap=True
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # never pickle memory maps (that would copy the whole array)
        state["_masks"] = None
        state["_confounder"] = None
        return state

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Sample:
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for cached {self.split} ({n} items)")
        if self._images is None:
            self._open()
        assert self._images is not None
        s = self.size
        img = torch.from_numpy(np.array(self._images[i]))
        a, b = int(self.box_offsets[i]), int(self.box_offsets[i + 1])
        boxes_t = empty_boxes()
        if b > a:
            bx = self.boxes[a:b]
            cls = self._remap[bx[:, 0].astype(np.int64)]
            bx = bx[cls >= 0].copy()
            bx[:, 0] = cls[cls >= 0]
            boxes_t = torch.from_numpy(bx)
        masks_t = None
        if self._masks is not None:
            packed = np.asarray(self._masks[i])[self.class_index]
            m = np.unpackbits(packed, axis=1, count=s * s).reshape(-1, s, s).view(bool)
            masks_t = torch.from_numpy(m)
        conf_t = None
        if self._confounder is not None:
            c = np.unpackbits(np.asarray(self._confounder[i]), count=s * s).reshape(s, s)
            conf_t = torch.from_numpy(c.view(bool))
        return Sample(
            image=img,
            target=torch.from_numpy(self.targets[i].copy()),
            boxes=boxes_t,
            masks=masks_t,
            target_mask=torch.from_numpy(self.target_mask[i].copy()),
            id=self.ids[i],
            meta={"cache_index": i},
            confounder=conf_t,
        )

    def check_matches(self, cfg: DataConfig) -> None:
        """Raise :class:`DataError` unless this cache was built for ``cfg``'s dataset, image size
        and (resolved) options."""
        src = self.manifest["source"]
        where = f"cache {self.cache_dir}"
        if src.get("dataset") != cfg.dataset:
            raise DataError(
                f"{where} holds dataset {src.get('dataset')!r}, the config asks for {cfg.dataset!r}"
            )
        if self.size != cfg.image_size:
            raise DataError(
                f"{where} has image_size {self.size}, the config asks for {cfg.image_size}"
            )
        want = _jsonable(resolved_options(cfg))
        have = src.get("options", {})
        if json.dumps(want, sort_keys=True) != json.dumps(have, sort_keys=True):
            raise DataError(
                f"{where} was built with options {have}, the config resolves to {want}; rebuild "
                "the cache or change data.options"
            )

    def __repr__(self) -> str:
        return f"CachedDataset({str(self.cache_dir)!r}, split={self.split!r}, n={self._n})"
