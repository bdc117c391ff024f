"""A sweep prepares its data once: every trial and loader worker reads one memory-mapped cache.

Before the first trial, :func:`prepare_sweep_data` enumerates the data configs the sweep's
trials can reach (a space may vary ``data.image_size``, pin ``data.classes``...) and makes sure
each has a complete cache (:mod:`lesionsweep.data.cache` format) in the sweep's *data cache
store*, one entry per data config keyed by :func:`~lesionsweep.sweep.datakey.data_key`:

* ``data_cache: sweep`` (default): the store is ``<sweep>/data-cache/``;
* ``data_cache: /some/folder``: a store shared by sweeps (e.g. ``~/.cache/lesionsweep``); a later
  sweep on the same data config reuses the entry instead of building it again;
* ``data_cache: none``: no cache; every trial reads the dataset itself.

Entries are built atomically under a file lock (see :mod:`lesionsweep.data.cache_store`), so
two drivers starting on the same store build an entry once, and an entry whose manifest does not
match its data config is refused. The returned spec maps each data config to its entry
(``SweepSpec.data_caches``) and :func:`~lesionsweep.sweep.spec.build_trial_config` points each
trial's ``data.cache`` at it; trials open the cache read-only with ``mmap``, so every trial and
every DataLoader worker on a node shares one copy through the page cache.

A spec (or space) that names ``data.cache`` itself keeps it: that cache is checked against each
reachable data config before the first trial and refused when it does not match.

Only the splits trials read are cached (``train``, ``eval.split`` and, where the trainer or the
WSMIS pipeline would evaluate it, ``val-loc``); test splits never (``lesionsweep evaluate``
reads them from the dataset). Data settings drawn from a range (not a choice) cannot be
enumerated: the sweep then runs without a cache and says so.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Iterator
from typing import Any

from ..config import RunConfig
from ..data.cache import CachedDataset
from ..data.cache_store import BuildProgress, ensure_cache
from ..data.factory import available_splits, build_source_dataset, resolved_options
from ..errors import ConfigError
from .datakey import STORE_FOLDER, data_key, store_folder
from .spaces import Choice, Const, IntRange, SearchSpace
from .spec import SweepSpec, build_trial_config

__all__ = ["STORE_FOLDER", "prepare_sweep_data", "reachable_configs", "needed_splits"]

#: most data configs one space may reach before the sweep gives up enumerating them
MAX_CONFIGS_PER_SPACE = 32
_ABSENT = object()  # a conditional parameter that is not drawn


def _is_data_key(key: str) -> bool:
    return key.startswith("data.") or key in ("eval.split", "eval.loc_split")


def _space_draws(spec: SweepSpec, space: SearchSpace) -> list[dict[str, Any]] | None:
    """Every combination of the space's data-related parameters, or None when a range makes
    that impossible (or there are more than :data:`MAX_CONFIGS_PER_SPACE`)."""
    keys: list[str] = []
    options: list[list[Any]] = []
    for p in space.params:
        if not _is_data_key(p.key):
            continue
        d = p.dist
        if p.key in spec.spaces.pins:
            values: list[Any] = [spec.spaces.pins[p.key]]
        elif isinstance(d, Const):
            values = [d.value]
        elif isinstance(d, Choice):
            values = list(d.values)
        elif isinstance(d, IntRange) and (d.high - d.low) // d.step < MAX_CONFIGS_PER_SPACE:
            values = d.grid()
        else:
            return None
        if p.when:
            values.append(_ABSENT)
        keys.append(p.key)
        options.append(values)
    n = 1
    for v in options:
        n *= len(v)
    if n > MAX_CONFIGS_PER_SPACE:
        return None
    return [
        {k: v for k, v in zip(keys, combo, strict=True) if v is not _ABSENT}
        for combo in itertools.product(*options)
    ]


def reachable_configs(spec: SweepSpec) -> list[RunConfig] | None:
    """Run configs covering every data config (and evaluated split) a trial can get.

    Only the data-related parameters (``data.*``, ``eval.split``, ``eval.loc_split``) are
    enumerated; others keep their defaults. With round-robin space selection and fewer trials
    than spaces, only the spaces that get a trial count.

    Returns:
        The configs, or None when a space draws a data setting from a range.
    """
    spaces = spec.spaces.spaces
    if spec.spaces.selection == "round_robin":
        spaces = spaces[: spec.budget.trials]
    out: list[RunConfig] = []
    for space in spaces:
        draws = _space_draws(spec, space)
        if draws is None:
            return None
        for params in draws:
            try:
                out.append(build_trial_config(spec, space.name, params))
            except ConfigError:
                continue  # a combination the space's conditions never produce
    return out


def needed_splits(cfg: RunConfig) -> list[str]:
    """The splits a trial with ``cfg`` reads: ``train``, ``eval.split`` and, when the trainer's
    ``eval.loc_split`` or the WSMIS Dice evaluation would read it, ``val-loc``."""
    out = ["train", cfg.eval.split]
    loc = cfg.eval.loc_split
    have = available_splits(cfg.data.dataset)
    if loc not in (None, "none", "auto"):
        out.append(loc)
    elif "val-loc" in have and cfg.eval.split != "val-loc":
        info = build_source_dataset(cfg.data, cfg.eval.split).info
        if not (info.has_boxes and info.has_masks):
            out.append("val-loc")
    return list(dict.fromkeys(s for s in out if s in have))


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _check_named(cfg: RunConfig) -> None:
    """Open the named cache's splits a trial reads; refuse a cache built for other data."""
    assert cfg.data.cache is not None
    for split in ("train", cfg.eval.split):
        ds = CachedDataset(cfg.data.cache, split, classes=cfg.data.classes)
        ds.check_matches(cfg.data)


def _distinct(cfgs: list[RunConfig]) -> Iterator[tuple[str, RunConfig, list[str]]]:
    """``(key, a config, union of the splits its trials read)`` per distinct data config."""
    by_key: dict[str, tuple[RunConfig, list[str]]] = {}
    for cfg in cfgs:
        key = data_key(cfg.data)
        first, splits = by_key.get(key, (cfg, []))
        by_key[key] = (first, list(dict.fromkeys(splits + needed_splits(cfg))))
    for key, (cfg, splits) in by_key.items():
        yield key, cfg, splits


def prepare_sweep_data(spec: SweepSpec, root: str, progress: bool = True) -> SweepSpec:
    """Build or reuse the cache of every data config the sweep's trials can reach.

    Args:
        spec: the validated sweep spec.
        root: the sweep folder (a local path or a URI).
        progress: print what is built or reused, and the build's images/s and ETA, on stderr.

    Returns:
        ``spec`` with ``data_caches`` (data-config key -> cache folder) set, or ``spec``
        unchanged when the sweep runs without a prepared cache (``data_cache: none``, an object
        store sweep folder without a ``data_cache`` folder, data settings drawn from ranges).

    Raises:
        DataError: a cache named in the spec, or an existing store entry, does not match the
            data config; a loader error while building (nothing half-written is left).
    """
    if spec.data_cache == "none":
        return spec
    cfgs = reachable_configs(spec)
    if cfgs is None:
        _say(
            progress,
            "data cache: a space draws a data setting from a range, so the data configs cannot "
            "be listed in advance; trials read the dataset directly (use choices for data.* "
            "parameters to get a shared cache)",
        )
        return spec
    for cfg in cfgs:
        if cfg.data.cache is not None:
            _check_named(cfg)
    todo = [c for c in cfgs if c.data.cache is None]
    if not todo:
        return spec
    store = store_folder(spec.data_cache, root)
    if store is None:
        _say(
            progress,
            f"data cache: the sweep folder {root} is an object store and cannot be memory-"
            "mapped; trials read the dataset directly (set data_cache: to a shared filesystem "
            "folder to cache it)",
        )
        return spec
    caches: dict[str, str] = {}
    for key, cfg, splits in _distinct(todo):
        label = f"data cache {key}"
        entry, built = ensure_cache(
            cfg.data,
            store,
            key,
            splits,
            resolved_options(cfg.data),
            progress=BuildProgress(label) if progress else None,
        )
        _say(progress, f"{label}: {'built' if built else 'reused'} {entry} ({', '.join(splits)})")
        caches[key] = str(entry)
    return dataclasses.replace(spec, data_caches=caches)
