"""The key of a data config in a sweep's data cache store, and where that store is (no torch).

Two trials read the same cache exactly when their data configs have the same key: the key is a
digest of everything that changes the images, labels or items a loader delivers (dataset,
root, image size, classes, options, ``skip_bad_images``) and of nothing else (``cache`` and
``num_workers`` are left out).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import ConfigError
from .storage import SweepLocation, is_uri

__all__ = ["STORE_FOLDER", "check_data_cache", "data_identity", "data_key", "store_folder"]

#: the store folder inside the sweep folder (``data_cache: sweep``)
STORE_FOLDER = "data-cache"


def check_data_cache(value: Any, where: str) -> str:
    """The spec's ``data_cache`` setting: ``sweep``, ``none`` (also null / false) or a folder.

    Raises:
        ConfigError: not a non-empty string, or a URI (a memory-mapped cache needs a local or
            shared filesystem folder).
    """
    if value is None or value is False:
        return "none"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected 'sweep', 'none' or a folder path, got {value!r}")
    if value not in ("sweep", "none") and is_uri(value):
        raise ConfigError(
            f"{where}: {value!r}: the cache is memory-mapped, so it must be a local or shared "
            "filesystem folder, not a URI"
        )
    return value


def store_folder(data_cache: str, root: str) -> Path | None:
    """The data cache store of a sweep folder ``root`` with the spec's ``data_cache`` setting:
    ``<root>/data-cache`` for ``sweep``, the folder given, or None (``none``, or ``sweep`` with
    an object-store sweep folder, which cannot be memory-mapped)."""
    if data_cache == "none":
        return None
    if data_cache != "sweep":
        return Path(data_cache).expanduser().absolute()
    local = SweepLocation(root).local_path
    return None if local is None else local / STORE_FOLDER


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def data_identity(data: DataConfig) -> dict[str, Any]:
    """The fields of ``data`` that decide what a cache of it holds, as plain JSON values."""
    root = None if data.root is None else os.path.abspath(os.path.expanduser(data.root))
    return {
        "dataset": data.dataset,
        "root": root,
        "image_size": int(data.image_size),
        "classes": None if data.classes is None else list(data.classes),
        "options": _plain(data.options),
        "skip_bad_images": bool(data.skip_bad_images),
    }


def data_key(data: DataConfig) -> str:
    """A short, filesystem-safe digest of :func:`data_identity` (``<dataset>-<size>-<hex16>``)."""
    body = json.dumps(data_identity(data), sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return f"{data.dataset}-{int(data.image_size)}-{digest}"
