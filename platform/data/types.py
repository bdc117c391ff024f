"""The one dataset item type every loader returns, and its collate function.

Coordinate convention (used by every loader, after any resizing):

* ``image`` is a ``uint8`` tensor ``[1, H, W]`` (grayscale, 0..255). Conversion to float,
  normalisation and channel replication happen on the training device, not in the loader, so the
  loader stays cheap and a cache can hand out arrays without copies.
* Boxes are ``float32`` ``[N, 5]`` rows ``(class_index, x0, y0, x1, y1)`` in *continuous pixel
  coordinates* of the delivered image: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``, so a
  box covering exactly pixel columns ``a..b`` inclusive is ``x0 = a, x1 = b + 1``. NIH's
  ``(x, y, w, h)`` becomes ``(x, y, x + w, y + h)`` scaled by ``size / original_size``.
  Metrics convert to their own conventions (e.g. wsolevaluation's inclusive +1 convention).
* Masks, where the dataset has them, are ``bool`` ``[K, H, W]`` (one plane per class, same H, W as
  the image). Datasets without masks return ``None``.
* ``confounder``, where a dataset draws a shortcut confounder (the phantom's tube), is ``bool``
  ``[H, W]`` (empty on images without it); ``None`` elsewhere. A batch stacks it to
  ``[B, H, W]`` when any item has one (items without one count as empty).
* ``target`` is ``float32`` ``[K]`` with 0/1 labels; ``target_mask`` is ``float32`` ``[K]``, 1 where
  the label is known (0 for CheXpert's U-Ignore), so losses can ignore unknown labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Sample:
    """One dataset item (see the module docstring for the conventions)."""

    image: torch.Tensor  # uint8 [1, H, W]
    target: torch.Tensor  # float32 [K]
    boxes: torch.Tensor  # float32 [N, 5] (class, x0, y0, x1, y1); N may be 0
    masks: torch.Tensor | None = None  # bool [K, H, W]
    target_mask: torch.Tensor | None = None  # float32 [K]; None means all labels known
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    confounder: torch.Tensor | None = None  # bool [H, W]; None: the dataset has none


@dataclass
class Batch:
    """A collated batch. ``boxes`` and ``ids`` stay per-image lists."""

    images: torch.Tensor  # uint8 [B, 1, H, W]
    targets: torch.Tensor  # float32 [B, K]
    target_mask: torch.Tensor  # float32 [B, K]
    boxes: list[torch.Tensor]  # B x float32 [N_i, 5]
    masks: torch.Tensor | None  # bool [B, K, H, W] if every item has masks, else None
    ids: list[str]
    confounder: torch.Tensor | None = None  # bool [B, H, W] if any item has one, else None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pin_memory(self) -> Batch:
        self.images = self.images.pin_memory()
        self.targets = self.targets.pin_memory()
        self.target_mask = self.target_mask.pin_memory()
        if self.masks is not None:
            self.masks = self.masks.pin_memory()
        if self.confounder is not None:
            self.confounder = self.confounder.pin_memory()
        return self


def collate(samples: list[Sample]) -> Batch:
    """Stack a list of :class:`Sample` into a :class:`Batch`."""
    if not samples:
        raise ValueError("collate() got an empty list of samples")
    images = torch.stack([s.image for s in samples])
    targets = torch.stack([s.target for s in samples])
    tmask = torch.stack(
        [s.target_mask if s.target_mask is not None else torch.ones_like(s.target) for s in samples]
    )
    masks = None
    if all(s.masks is not None for s in samples):
        masks = torch.stack([s.masks for s in samples])  # type: ignore[misc]
    confounder = None
    if any(s.confounder is not None for s in samples):
        h, w = samples[0].image.shape[-2:]
        empty = torch.zeros((h, w), dtype=torch.bool)
        confounder = torch.stack(
            [s.confounder if s.confounder is not None else empty for s in samples]
        )
    return Batch(
        images=images,
        targets=targets,
        target_mask=tmask,
        boxes=[s.boxes for s in samples],
        masks=masks,
        ids=[s.id for s in samples],
        confounder=confounder,
    )


def empty_boxes() -> torch.Tensor:
    """A ``[0, 5]`` float32 box tensor."""
    return torch.zeros((0, 5), dtype=torch.float32)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset provides: class names and which localization labels exist."""

    name: str
    classes: tuple[str, ...]
    has_boxes: bool
    has_masks: bool
    image_size: int
    # classes that have localization ground truth (None: every class with boxes / masks)
    loc_classes: tuple[str, ...] | None = None
    # class a shortcut confounder co-occurs with (items then carry ``confounder`` masks)
    confounder_class: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def localized(self) -> tuple[bool, ...]:
        """Per class: does it have localization ground truth (see ``loc_classes``)."""
        if self.loc_classes is None:
            return (True,) * len(self.classes)
        return tuple(c in self.loc_classes for c in self.classes)


class SplitDataset(Protocol):
    """What every dataset split of the platform is (loaders, the phantom, the cache): a sized,
    indexable source of :class:`Sample` items that describes itself through ``info``."""

    info: DatasetInfo

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
