"""One entry point from a :class:`~lesionsweep.config.DataConfig` to a dataset split.

``build_dataset(cfg, split)`` returns a ``torch.utils.data.Dataset`` of
:class:`~lesionsweep.data.types.Sample` with an ``.info`` (:class:`DatasetInfo`), dispatching on
``cfg.dataset``; when ``cfg.cache`` is set it reads that preprocessed cache instead
(:class:`~lesionsweep.data.cache.CachedDataset`) after checking it matches the config. Loader
modules are imported lazily, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from .base import SPLITS
from .types import SplitDataset

# dataset name -> (module, class)
DATASETS: dict[str, tuple[str, str]] = {
    "phantom": ("lesionsweep.data.phantom", "PhantomDataset"),
    "nih": ("lesionsweep.data.nih", "NIHDataset"),
    "siim": ("lesionsweep.data.siim", "SIIMDataset"),
    "rsna": ("lesionsweep.data.rsna", "RSNADataset"),
    "chexpert": ("lesionsweep.data.chexpert", "CheXpertDataset"),
}
# DataConfig fields the phantom takes as arguments; options may not repeat them
_PHANTOM_RESERVED = ("split", "image_size", "classes")


def dataset_class(name: str) -> Any:
    """The loader class registered under ``name`` (imported on first use)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    module, cls = DATASETS[name]
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


def build_dataset(cfg: DataConfig, split: str) -> SplitDataset:
    """Build one split of the dataset a :class:`DataConfig` describes.

    Args:
        cfg: ``dataset`` picks the loader (``phantom``, ``nih``, ``siim``, ``rsna``,
            ``chexpert``); ``root`` its files; ``image_size`` the side ``S`` of the delivered
            square images; ``classes`` an optional class subset; ``skip_bad_images`` skip and
            record unreadable images (``dataset.skipped``); ``options`` loader-specific options
            (unknown ones are a :class:`DataError`). With ``cache`` set, the cache folder is read
            instead and must have been built from the same dataset, image size and options.
        split: ``train``, ``val``, ``val-loc``, ``test-loc`` or ``test``.

    Returns:
        A ``Dataset`` of :class:`Sample` (``image`` ``uint8`` ``[1, S, S]``, ``target`` /
        ``target_mask`` ``float32`` ``[K]``, ``boxes`` ``float32`` ``[N, 5]`` in continuous pixel
        coordinates of the ``S x S`` image, ``masks`` ``bool`` ``[K, S, S]`` or ``None``) with
        ``.info``.

    Raises:
        DataError: unknown dataset / split, a split the dataset lacks (listing what exists),
            unknown option, missing or malformed files, unreadable images.
    """
    if cfg.cache:
        from .cache import CachedDataset

        ds = CachedDataset(cfg.cache, split, classes=cfg.classes)
        ds.check_matches(cfg)
        return ds
    return build_source_dataset(cfg, split)
