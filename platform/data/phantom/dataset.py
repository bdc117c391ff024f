"""The phantom as a torch dataset of :class:`~lesionsweep.data.types.Sample` items."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from ...errors import DataError, check_keys
from ..types import DatasetInfo, Sample
from .render import _render, split_stream
from .spec import _SPLIT_ALIASES, PHANTOM_CLASSES, PhantomSpec, _check_int, _Compact


class PhantomDataset(torch.utils.data.Dataset):
    """The synthetic chest-film dataset (no files; every item rendered from the seed).

    Args:
        split: "train", "val", "test", or the aliases "val-loc" / "test-loc" (the phantom has
            boxes on every split).
        image_size: side of the square images, 64..1024.
        classes: optional subset of :data:`PHANTOM_CLASSES`, in the order wanted; selects and
            reorders the target entries, mask planes and box class indices. Images still show
            all lesion classes.
        num_train, num_val, num_test: split sizes.
        seed: non-negative integer.
        prevalence, difficulty, confounder_class, confounder_prob, confounder_base_rate: see
            :class:`PhantomSpec`.
        cache_in_memory: keep rendered items (images and trimmed masks) after first access,
            in this process: with DataLoader workers each worker keeps its own copy (memory
            times workers), and an item the shuffle hands to another worker in a later epoch is
            rendered again (with 2 workers about half the items in epoch 2, a quarter in epoch
            3). Sweeps render each item once into a memory-mapped cache that every trial and
            worker shares (:mod:`lesionsweep.sweep.datacache`); for single runs build one with
            ``lesionsweep cache`` and set ``data.cache``.

    Items are :class:`~lesionsweep.data.types.Sample`: image ``uint8 [1, H, W]``, target
    ``float32 [K]``, boxes ``float32 [N, 5]`` (class index into ``classes``, x0, y0, x1, y1),
    masks ``bool [K, H, W]``, id ``phantom-<split>-<index:06d>``, ``confounder`` (the tube's
    mask ``bool [H, W]``, empty without a tube, when ``confounder_class`` is set; else None;
    ``info.confounder_class`` names it when that class is selected) and meta (see
    :class:`PhantomItem`; ``confounder_mask`` is a bool tensor ``[H, W]`` or None).

    Raises:
        TypeError: unknown keyword arguments (all named, with the allowed ones).
        DataError: a bad value (names the option and what is allowed).
    """

    _OPTIONS = (
        "split", "image_size", "classes", "num_train", "num_val", "num_test", "seed",
        "prevalence", "difficulty", "confounder_class", "confounder_prob",
        "confounder_base_rate", "cache_in_memory",
    )  # fmt: skip

    def __init__(
        self,
        split: str = "train",
        image_size: int = 128,
        classes: Iterable[str] | None = None,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        seed: int = 0,
        prevalence: float | Mapping[str, float] = 0.3,
        difficulty: float = 0.3,
        confounder_class: str | None = None,
        confounder_prob: float = 0.9,
        confounder_base_rate: float = 0.05,
        cache_in_memory: bool = True,
        **unknown: Any,
    ) -> None:
        check_keys(unknown, self._OPTIONS, "PhantomDataset", "option", error=TypeError)
        self.stream = split_stream(split)
        self.split = _SPLIT_ALIASES.get(split, split)
        self.spec = PhantomSpec(
            image_size=image_size,
            prevalence=prevalence,
            difficulty=difficulty,
            confounder_class=confounder_class,
            confounder_prob=confounder_prob,
            confounder_base_rate=confounder_base_rate,
            seed=seed,
        )
        sizes = {
            "train": _check_int("num_train", num_train, 0),
            "val": _check_int("num_val", num_val, 0),
            "test": _check_int("num_test", num_test, 0),
        }
        self.length = sizes[self.split]
        if classes is None:
            names = PHANTOM_CLASSES
        else:
            if isinstance(classes, str):
                raise DataError(f"phantom: classes must be a list of names, got {classes!r}")
            names = tuple(classes)
            bad = [c for c in names if c not in PHANTOM_CLASSES]
            if bad:
                raise DataError(f"phantom: unknown classes {bad}; allowed: {list(PHANTOM_CLASSES)}")
            if not names or len(set(names)) != len(names):
                raise DataError(f"phantom: classes must be non-empty and unique, got {names}")
        self.classes = names
        # index into ``classes`` of each phantom class, -1 where not selected
        self._remap = tuple(names.index(c) if c in names else -1 for c in PHANTOM_CLASSES)
        # rendered lesions come sorted by class; a subset in the original order keeps that
        self._ordered = list(names) == sorted(names, key=PHANTOM_CLASSES.index)
        self.info = DatasetInfo(
            name="phantom",
            classes=names,
            has_boxes=True,
            has_masks=True,
            image_size=self.spec.image_size,
            confounder_class=confounder_class if confounder_class in names else None,
        )
        self.cache_in_memory = bool(cache_in_memory)
        self._cache: dict[int, _Compact] = {}

    def __len__(self) -> int:
        return self.length

    def _compact(self, index: int) -> _Compact:
        item = self._cache.get(index)
        if item is None:
            item = _render(self.spec, self.stream, index)
            if self.cache_in_memory:
                self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> Sample:
        if type(index) is not int and (
            isinstance(index, bool) or not isinstance(index, numbers.Integral)
        ):
            raise TypeError(f"PhantomDataset index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"phantom {self.split} index {index} out of range({self.length})")
        c = self._compact(i)
        s = self.spec.image_size
        k = len(self.classes)
        target = np.zeros(k, dtype=np.float32)
        masks = np.zeros((k, s, s), dtype=bool)
        rows = []
        for les in c.lesions:
            j = self._remap[les.cls]
            if j < 0:
                continue
            target[j] = 1.0
            h, w = les.mask.shape
            masks[j, les.y0 : les.y0 + h, les.x0 : les.x0 + w] |= les.mask
            rows.append((j, *les.box))
        boxes = np.array(rows, dtype=np.float32).reshape(-1, 5)
        if len(rows) > 1 and not self._ordered:  # a reordering class subset: sort by class
            boxes = boxes[np.argsort(boxes[:, 0], kind="stable")]
        meta = c.meta(as_torch=True)
        meta["split"] = self.split
        tube = None  # with a confounder configured: the tube's mask, empty when none was drawn
        if self.spec.confounder_class is not None:
            tube = meta["confounder_mask"]
            if tube is None:
                tube = torch.zeros((s, s), dtype=torch.bool)
        return Sample(
            image=torch.from_numpy(c.image.reshape(1, s, s)),
            target=torch.from_numpy(target),
            boxes=torch.from_numpy(boxes),
            masks=torch.from_numpy(masks),
            id=f"phantom-{self.split}-{i:06d}",
            meta=meta,
            confounder=tube,
        )


# ---------------------------------------------------------------------------------------------
# Preview
# ---------------------------------------------------------------------------------------------
