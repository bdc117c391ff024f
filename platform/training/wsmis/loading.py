"""Data plumbing of the WSMIS runner: indexed loaders over subsets, labels, flips, packed masks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from ...data.types import SplitDataset
from ...errors import DataError
from ...fileio import atomic_write
from ..runtime import make_loader

__all__ = [
    "IndexedLoader",
    "labels_of",
    "random_flip",
    "poly_lr",
    "save_npy",
    "pack",
    "unpack",
    "add_dice",
]


class IndexedLoader:
    """Batches of a subset of a dataset with their dataset indices.

    Iterating yields ``(indices, batch)``: ``indices`` int64 ``[B]`` (positions in ``ds``) and
    the :class:`~lesionsweep.data.types.Batch` of those samples. Each pass builds the platform's
    loader (:func:`lesionsweep.training.runtime.make_loader`: pinned memory on CUDA, seeded
    workers) over the subset in the pass's order, shuffled by one ``randperm`` of ``generator``
    per pass (as a shuffling ``DataLoader``) or as given.

    Args:
        ds: the dataset.
        indices: the dataset positions to visit.
        batch_size, num_workers, device, drop_last: as :func:`make_loader`.
        shuffle: a new order per pass (``generator`` required).
        generator: the shuffling generator (also seeds the loader's workers).
        masks: deliver ``batch.masks`` and boxes (``False``: image labels only).
    """

    def __init__(
        self,
        ds: SplitDataset,
        indices: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        masks: bool = False,
    ) -> None:
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.device = device
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.masks = masks

    def __len__(self) -> int:
        n, bs = len(self.indices), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:

        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).numpy()]
        loader = make_loader(
            Subset(self.ds, order.tolist()),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            generator=self.generator,
            drop_last=self.drop_last,
            labels_only=not self.masks,
        )
        off = 0
        for batch in loader:
            n = len(batch)
            yield order[off : off + n], batch
            off += n


def labels_of(ds: SplitDataset) -> tuple[np.ndarray, np.ndarray]:
    """Image labels ``[N, K]`` and their known-mask of a dataset (without decoding if possible)."""
    t = getattr(ds, "targets", None)
    m = getattr(ds, "target_mask", None)
    n = len(ds)
    if isinstance(t, np.ndarray) and t.ndim == 2 and t.shape[0] == n:
        mask = m if isinstance(m, np.ndarray) and m.shape == t.shape else np.ones_like(t)
        return t.astype(np.float32), mask.astype(np.float32)
    ts, ms = [], []
    for i in range(n):
        s = ds[i]
        ts.append(s.target.numpy())
        ms.append(np.ones_like(ts[-1]) if s.target_mask is None else s.target_mask.numpy())
    return np.stack(ts).astype(np.float32), np.stack(ms).astype(np.float32)


def random_flip(gen: torch.Generator, *tensors: torch.Tensor | None) -> list[Any]:
    """Flip each item horizontally (last axis) with probability 0.5, the same for all tensors."""
    ref = next(t for t in tensors if t is not None)
    flip = torch.rand(ref.shape[0], generator=gen) < 0.5
    out: list[Any] = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        f = flip.to(t.device).view(-1, *([1] * (t.dim() - 1)))
        out.append(torch.where(f, torch.flip(t, dims=[-1]), t))
    return out


def poly_lr(optimizer: torch.optim.Optimizer, base: list[float], step: int, total: int) -> None:
    f = (1.0 - min(step, total - 1) / max(1, total)) ** 0.9
    for g, b in zip(optimizer.param_groups, base, strict=True):
        g["lr"] = b * f


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (temp file in the same folder, fsync, rename): never a torn file."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _w)


def pack(masks: np.ndarray) -> np.ndarray:
    return np.packbits(masks.astype(bool), axis=-1)


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def add_dice(ev: Any, pred: torch.Tensor, batch: Any) -> None:
    """Add ``pred`` (bool ``[B, K, H, W]``) over the (image, class) pairs with known labels."""
    known = batch.target_mask > 0.5
    if batch.masks is None:
        raise DataError("the Dice split delivered a batch without masks")
    p = pred.cpu()[known].float()
    g = batch.masks[known]
    if p.shape[0]:
        ev.accumulate(p.numpy(), g.numpy())
