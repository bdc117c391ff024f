"""Datasets: the :class:`Sample` type, the loaders, the factory and the preprocessed cache.

``build_dataset(cfg, split)`` is the one entry point from a
:class:`~lesionsweep.config.DataConfig` to a ``torch`` dataset; ``build_cache`` writes the fast
on-disk cache that ``DataConfig.cache`` points at. The loader modules (``nih``, ``siim``,
``rsna``, ``chexpert``, ``phantom``) are imported on first use.
"""

from __future__ import annotations

from .base import SPLITS
from .cache import CachedDataset, build_cache
from .factory import DATASETS, available_splits, build_dataset
from .types import Batch, DatasetInfo, Sample, SplitDataset, collate, empty_boxes

__all__ = [
    "DATASETS",
    "SPLITS",
    "Batch",
    "CachedDataset",
    "DatasetInfo",
    "Sample",
    "SplitDataset",
    "available_splits",
    "build_cache",
    "build_dataset",
    "collate",
    "empty_boxes",
]
