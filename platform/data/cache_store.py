"""A folder of caches keyed by data config, safe to share between processes and drivers.

A *cache store* is a plain folder holding one :func:`~lesionsweep.data.cache.build_cache`
cache per data config, each under a key the caller computes from that config::

    <store>/<key>/manifest.json, <split>/...   one complete cache (see lesionsweep.data.cache)
    <store>/<key>.lock                         lock file of that entry (fcntl.flock)

:func:`ensure_cache` returns the entry for a data config, building it first when it is missing
or lacks a split. The entry is built in a temporary folder and renamed into place only when it
is complete (so a killed build leaves no half cache under ``<store>/<key>``), and the build holds
an exclusive ``flock`` on ``<key>.lock``: a second process asking for the same entry waits, then
reuses what the first built. An entry whose manifest does not match the data config (dataset,
image size, resolved options, classes, root, ``skip_bad_images``) is refused with a
:class:`DataError`, never used.

``flock`` works on local filesystems and on NFSv4 / Lustre / GPFS mounts that support POSIX
locks (on a cluster the store lives on the sweep's shared storage).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..config import DataConfig
from ..errors import DataError
from .cache import MANIFEST, Progress, build_cache, read_manifest

__all__ = ["BuildProgress", "ensure_cache", "manifest_mismatch", "normalized_root"]


def normalized_root(root: str | None) -> str | None:
    """``root`` as an absolute path (``~`` expanded), the form recorded in store manifests."""
    return None if root is None else os.path.abspath(os.path.expanduser(root))


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def manifest_mismatch(
    manifest: Mapping[str, Any], cfg: DataConfig, options: Mapping[str, Any]
) -> str | None:
    """Why a cache manifest does not hold ``cfg``'s data, or None when it does.

    Args:
        manifest: a cache's ``manifest.json`` (:func:`~lesionsweep.data.cache.read_manifest`).
        cfg: the data config (``cache`` and ``num_workers`` are ignored).
        options: ``cfg.options`` resolved by the loader (``factory.resolved_options``).
    """
    src = manifest.get("source", {})
    want = {
        "dataset": cfg.dataset,
        "image_size": int(cfg.image_size),
        "options": json.loads(_canon(dict(options))),
        "classes": list(cfg.classes) if cfg.classes is not None else None,
        "root": normalized_root(cfg.root),
        "skip_bad_images": bool(cfg.skip_bad_images),
    }
    have = {
        "dataset": src.get("dataset"),
        "image_size": manifest.get("image_size"),
        "options": src.get("options", {}),
        "classes": src.get("classes"),
        "root": normalized_root(src.get("root")),
        "skip_bad_images": src.get("skip_bad_images"),
    }
    bad = [k for k in want if _canon(want[k]) != _canon(have[k])]
    if not bad:
        return None
    return "; ".join(f"{k}: cache has {have[k]!r}, the config asks for {want[k]!r}" for k in bad)


class BuildProgress:
    """Prints a cache build's progress (items, images/s, ETA) at most every ``every_s`` seconds.

    Use as the ``progress`` callback of :func:`ensure_cache` / ``build_cache``.

    Args:
        label: what is built (printed first on each line).
        stream: where to print (default ``sys.stderr``).
        every_s: seconds between lines (the last item of each split always prints).
    """

    def __init__(self, label: str, stream: TextIO | None = None, every_s: float = 2.0) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._split = ""
        self._t0 = self._prev = self._shown = time.monotonic()

    def __call__(self, split: str, done: int, total: int) -> None:
        now = time.monotonic()
        if split != self._split:  # a split starts when the previous one's last item was read
            self._split, self._t0, self._shown = split, self._prev, now
        self._prev = now
        if done < total and now - self._shown < self.every_s:
            return
        self._shown = now
        rate = done / max(now - self._t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        tail = f"ETA {eta:.0f} s" if done < total else f"done in {now - self._t0:.2f} s"
        print(
            f"{self.label}: {split} {done}/{total} images, {rate:.0f} img/s, {tail}",
            file=self.stream,
            flush=True,
        )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # blocks while another process builds
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _clear_leftovers(store: Path, key: str) -> None:
    """Remove temporary folders of builds of ``key`` that were killed (only under the lock)."""
    for p in store.glob(f".{key}.*-*"):
        if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def ensure_cache(
    cfg: DataConfig,
    store: str | os.PathLike[str],
    key: str,
    splits: Sequence[str],
    options: Mapping[str, Any],
    *,
    num_workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[Path, bool]:
    """The store entry ``<store>/<key>`` holding ``splits`` of ``cfg``'s data; built if needed.

    Args:
        cfg: the data config (``cache`` is ignored; ``root`` is recorded as an absolute path).
        store: the store folder (created if missing).
        key: the entry's name, a digest of the data config chosen by the caller (the same
            config must always give the same key).
        splits: splits the entry must hold; an entry that lacks some is rebuilt with the union.
        options: ``cfg.options`` resolved by the loader (checked against the manifest).
        num_workers: decoding processes of a build (default ``cfg.num_workers``).
        progress: ``progress(split, done, total)`` callback of a build (:class:`BuildProgress`).

    Returns:
        ``(entry folder, whether this call built it)``.

    Raises:
        DataError: the entry exists but was built from another data config (the message names
            the differences), or a loader error while building (nothing is left under
            ``<store>/<key>``).
    """
    if not key or "/" in key or key.startswith("."):
        raise DataError(f"cache store key {key!r} must be a plain folder name")
    folder = Path(store)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / key
    src = dataclasses.replace(cfg, cache=None, root=normalized_root(cfg.root))
    with _locked(folder / f"{key}.lock"):
        _clear_leftovers(folder, key)
        wanted = list(dict.fromkeys(splits))
        overwrite = False
        if entry.exists():
            if not (entry / MANIFEST).is_file():
                raise DataError(
                    f"{entry} is not a complete cache (no {MANIFEST}); it was not written by "
                    "lesionsweep: remove it"
                )
            manifest = read_manifest(entry)
            why = manifest_mismatch(manifest, src, options)
            if why is not None or manifest.get("key", key) != key:
                raise DataError(
                    f"cache {entry} does not match the data config ({why or 'another key'}); "
                    "refusing to use it: remove it or point the sweep at another data cache"
                )
            have = list(manifest["splits"])
            missing = [s for s in wanted if s not in have]
            if not missing:
                return entry, False
            wanted = have + missing
            overwrite = True
        build_cache(
            src,
            entry,
            wanted,
            overwrite=overwrite,
            num_workers=num_workers,
            progress=progress,
            key=key,
        )
        return entry, True
