"""The phantom's spec (its knobs, validated), the item it renders, and the compact stored form."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import DataError

PHANTOM_CLASSES: tuple[str, ...] = ("nodule", "mass", "cardiomegaly", "effusion", "pneumothorax")
_NODULE, _MASS, _CARDIO, _EFFUSION, _PTX = range(5)

MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 1024

_SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_SPLIT_ALIASES: dict[str, str] = {"val-loc": "val", "test-loc": "test"}


def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"phantom: {name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise DataError(f"phantom: {name} must be in [0, 1], got {value!r}")
    return v


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"phantom: {name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise DataError(f"phantom: {name} must be {allowed}, got {v}")
    return v


@dataclass(frozen=True)
class PhantomSpec:
    """What to render. Validated on construction (bad values raise :class:`DataError`).

    Attributes:
        image_size: side of the square image in pixels, 64..1024.
        prevalence: probability that an image carries each class: one float in [0, 1] for all
            classes, or a mapping ``class name -> float`` (classes not named get 0).
        difficulty: in [0, 1]; higher means lower lesion contrast, more size jitter, more noise.
        confounder_class: class the shortcut tube co-occurs with, or ``None`` for no tube.
        confounder_prob: P(tube | image carries ``confounder_class``).
        confounder_base_rate: P(tube | image does not carry ``confounder_class``).
        seed: non-negative integer; the same seed renders the same bytes.
    """

    image_size: int = 128
    prevalence: float | Mapping[str, float] = 0.3
    difficulty: float = 0.3
    confounder_class: str | None = None
    confounder_prob: float = 0.9
    confounder_base_rate: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        object.__setattr__(self, "image_size", int(self.image_size))
        if isinstance(self.prevalence, Mapping):
            unknown = [k for k in self.prevalence if k not in PHANTOM_CLASSES]
            if unknown:
                raise DataError(
                    f"phantom: prevalence names unknown classes {unknown}; "
                    f"allowed: {list(PHANTOM_CLASSES)}"
                )
            prev = {k: _check_unit(f"prevalence[{k!r}]", v) for k, v in self.prevalence.items()}
            object.__setattr__(self, "prevalence", prev)  # a copy (picklable, unlike a proxy)
        else:
            object.__setattr__(self, "prevalence", _check_unit("prevalence", self.prevalence))
        object.__setattr__(self, "difficulty", _check_unit("difficulty", self.difficulty))
        if self.confounder_class is not None and self.confounder_class not in PHANTOM_CLASSES:
            raise DataError(
                f"phantom: confounder_class {self.confounder_class!r} is not a phantom class; "
                f"allowed: {list(PHANTOM_CLASSES)} or None"
            )
        for name in ("confounder_prob", "confounder_base_rate"):
            object.__setattr__(self, name, _check_unit(name, getattr(self, name)))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0))

    def class_prevalences(self) -> tuple[float, ...]:
        """Prevalence of each class of :data:`PHANTOM_CLASSES`, in that order."""
        if isinstance(self.prevalence, Mapping):
            return tuple(float(self.prevalence.get(c, 0.0)) for c in PHANTOM_CLASSES)
        return (float(self.prevalence),) * len(PHANTOM_CLASSES)


@dataclass
class PhantomItem:
    """One rendered phantom (numpy).

    Attributes:
        image: ``uint8`` ``[H, W]``.
        labels: ``float32`` ``[K]`` (K = 5, :data:`PHANTOM_CLASSES` order), 1 iff the class's mask
            plane is non-empty.
        boxes: ``float32`` ``[N, 5]`` rows ``(class_index, x0, y0, x1, y1)``, continuous pixel
            coordinates, one row per lesion, sorted by class.
        masks: ``bool`` ``[K, H, W]``.
        meta: ``confounder`` (bool), ``confounder_kind`` ("drain", "ng_tube" or None),
            ``confounder_box`` ((x0, y0, x1, y1) or None), ``confounder_mask`` (bool ``[H, W]`` or
            None), ``stream``, ``index``, ``seed``.
    """

    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Lesion:
    cls: int
    y0: int
    x0: int
    mask: np.ndarray  # bool [h, w], trimmed to its tight box

    @property
    def box(self) -> tuple[float, float, float, float]:
        h, w = self.mask.shape
        return (float(self.x0), float(self.y0), float(self.x0 + w), float(self.y0 + h))


@dataclass
class _Compact:
    """A rendered item with masks stored as trimmed crops (what the in-memory cache holds)."""

    image: np.ndarray  # uint8 [S, S]
    lesions: list[_Lesion]
    tube: _Lesion | None
    tube_kind: str | None
    stream: int
    index: int
    seed: int

    def labels(self) -> np.ndarray:
        out = np.zeros(len(PHANTOM_CLASSES), dtype=np.float32)
        for les in self.lesions:
            out[les.cls] = 1.0
        return out

    def boxes(self) -> np.ndarray:
        if not self.lesions:
            return np.zeros((0, 5), dtype=np.float32)
        return np.array([(les.cls, *les.box) for les in self.lesions], dtype=np.float32)

    def meta(self, as_torch: bool = False) -> dict[str, Any]:
        tube_mask: Any = None
        if self.tube is not None:
            s = self.image.shape[0]
            m = np.zeros((s, s), dtype=bool)
            h, w = self.tube.mask.shape
            m[self.tube.y0 : self.tube.y0 + h, self.tube.x0 : self.tube.x0 + w] = self.tube.mask
            tube_mask = torch.from_numpy(m) if as_torch else m
        return {
            "confounder": self.tube is not None,
            "confounder_kind": self.tube_kind,
            "confounder_box": None if self.tube is None else self.tube.box,
            "confounder_mask": tube_mask,
            "stream": self.stream,
            "index": self.index,
            "seed": self.seed,
        }
