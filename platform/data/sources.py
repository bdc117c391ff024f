"""The dataset registry and the original-file datasets (never a cache).

``DATASETS`` maps each dataset name to its loader class (imported on first use, so importing this
module costs nothing); :func:`build_source_dataset` builds a split from the original files. The
cache builder reads through it, and :func:`lesionsweep.data.factory.build_dataset` adds the cache.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Mapping
from typing import Any

from lesionsweep.methods.registry import Registry

from ..config import DataConfig, DatasetName
from ..errors import DataError
from .base import SPLITS
from .types import SplitDataset

#: dataset name -> (module, class) of its loader, imported on first use. The names are the ones
#: :data:`lesionsweep.config.DatasetName` declares (a test checks they agree).
DATASETS: Registry[Any] = Registry("dataset")
DATASETS.add("phantom", ("lesionsweep.data.phantom", "PhantomDataset"))
DATASETS.add("nih", ("lesionsweep.data.nih", "NIHDataset"))
DATASETS.add("siim", ("lesionsweep.data.siim", "SIIMDataset"))
DATASETS.add("rsna", ("lesionsweep.data.rsna", "RSNADataset"))
DATASETS.add("chexpert", ("lesionsweep.data.chexpert", "CheXpertDataset"))
# DataConfig fields the phantom takes as arguments; options may not repeat them
_PHANTOM_RESERVED = ("split", "image_size", "classes")


def dataset_class(name: str) -> Any:
    """The loader class registered under ``name`` (imported on first use)."""
    if name not in DATASETS:
        names = ", ".join(typing.get_args(DatasetName))
        raise DataError(f"unknown dataset {name!r}; choose one of: {names}")
    module, cls = typing.cast(tuple[str, str], DATASETS[name])
    return getattr(importlib.import_module(module), cls)


def available_splits(name: str, data: DataConfig | None = None) -> tuple[str, ...]:
    """Splits dataset ``name`` offers (the phantom has all five); with ``data``, the splits its
    root and options offer (a loader may offer its localization splits only when their optional
    files are present, see ``offered_splits``)."""
    cls = dataset_class(name)
    offered = getattr(cls, "offered_splits", None)
    if data is not None and offered is not None:
        return tuple(offered(data.root, resolved_options(data)))
    return tuple(getattr(cls, "splits", SPLITS))


def resolved_options(cfg: DataConfig) -> dict[str, Any]:
    """``cfg.options`` validated and completed with the loader's defaults (no file access).

    The phantom validates its options when built; here they are returned as given.
    """
    cls = dataset_class(cfg.dataset)
    if hasattr(cls, "resolve_options"):
        return dict(cls.resolve_options(cfg.options))
    return _plain(cfg.options)


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in dict(options).items()}


def build_source_dataset(cfg: DataConfig, split: str) -> SplitDataset:
    """Build ``split`` of ``cfg.dataset`` from the original files (never from a cache)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits are: {', '.join(SPLITS)}")
    cls = dataset_class(cfg.dataset)
    have = available_splits(cfg.dataset)
    if split not in have:
        raise DataError(
            f"split {split!r} is not available for dataset {cfg.dataset!r}; it has: "
            f"{', '.join(have)}"
        )
    if cfg.dataset == "phantom":
        bad = [k for k in cfg.options if k in _PHANTOM_RESERVED]
        if bad:
            raise DataError(
                f"data.options {bad} for the phantom repeat data config fields; set data.split "
                "/ data.image_size / data.classes through the config instead"
            )
        try:
            return cls(
                split=split, image_size=cfg.image_size, classes=cfg.classes, **dict(cfg.options)
            )
        except TypeError as e:  # the phantom reports unknown keyword options as TypeError
            raise DataError(f"dataset 'phantom': {e}") from None
    if not cfg.root:
        raise DataError(f"data.root is required for dataset {cfg.dataset!r}")
    return cls(
        root=cfg.root,
        split=split,
        image_size=cfg.image_size,
        classes=cfg.classes,
        skip_bad_images=cfg.skip_bad_images,
        options=cfg.options,
    )
