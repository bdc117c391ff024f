"""One entry point from a :class:`~lesionsweep.config.DataConfig` to a dataset split.

``build_dataset(cfg, split)`` returns a dataset of :class:`~lesionsweep.data.types.Sample` with an
``.info`` (:class:`DatasetInfo`), dispatching on ``cfg.dataset`` (:mod:`.sources`); when
``cfg.cache`` is set it reads that preprocessed cache instead
(:class:`~lesionsweep.data.cache.CachedDataset`) after checking it matches the config.
"""

from __future__ import annotations

from ..config import DataConfig
from .cache import CachedDataset
from .sources import (
    DATASETS,
    available_splits,
    build_source_dataset,
    dataset_class,
    resolved_options,
)
from .types import SplitDataset

__all__ = [
    "DATASETS",
    "available_splits",
    "build_dataset",
    "build_source_dataset",
    "dataset_class",
    "resolved_options",
]


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
        ds = CachedDataset(cfg.cache, split, classes=cfg.classes)
        ds.check_matches(cfg)
        return ds
    return build_source_dataset(cfg, split)
