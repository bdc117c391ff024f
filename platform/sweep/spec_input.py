"""The input side of a sweep spec: ``--set`` overrides and the checks it gets before launch.

* :func:`apply_overrides`: ``--set PATH=VALUE`` values applied onto the parsed YAML;

* :func:`refuse_space_as_spec`: a search space given where a spec is expected says how to use it;
* :func:`check_storage`: a storage URI must use a scheme pyarrow's filesystems understand;
* :func:`typed_settings`: the spec's ``data`` and ``base`` values converted once to their
  declared types (so a pinned ``optim.lr`` stays a float all the way into ``trials.parquet``);
* :func:`refuse_space_base_conflicts`: a spec ``data`` value may not silently replace a space's
  own ``base`` value;
* :func:`check_dataset_roots`: the dataset root of every non-synthetic dataset a trial can read
  exists.

Every failure is one :class:`~lesionsweep.errors.ConfigError` naming the file, the key and the
value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import SECTIONS, convert_key
from ..errors import ConfigError, check_keys
from ..values import plain
from .spaces import TOP_KEYS as SPACE_KEYS
from .spaces import SearchSpace

__all__ = [
    "apply_overrides",
    "STORAGE_SCHEMES",
    "refuse_space_as_spec",
    "check_storage",
    "flat_data",
    "typed_settings",
    "refuse_space_base_conflicts",
    "check_dataset_roots",
]

#: storage URI schemes ``pyarrow.fs.FileSystem.from_uri`` understands (besides local paths)
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def refuse_space_as_spec(raw: Mapping[str, Any], source: str) -> None:
    """A search space given where a spec is expected: say how to use it."""
    if "parameters" in raw and "spaces" not in raw and set(raw) <= set(SPACE_KEYS):
        raise ConfigError(
            f"{source}: this is a search space, not a sweep spec; list it in a spec's `spaces:` "
            f"(spaces: [{source}]), or run it with the demo settings: "
            f"lesionsweep sweep --set spaces=[{source}]"
        )


def check_storage(storage: str, source: str) -> None:
    """A storage URI must use a scheme pyarrow's filesystems understand."""
    if "://" not in storage:
        return
    scheme = storage.split("://", 1)[0].lower()
    if scheme not in STORAGE_SCHEMES:
        raise ConfigError(
            f"{source}: storage = {storage!r}: unsupported URI scheme {scheme!r}; use a local "
            f"folder or one of: {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
        )


def flat_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's ``data`` section as flat keys (``data.options.<opt>`` one by one)."""
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k == "options" and isinstance(v, Mapping):
            flat.update({f"data.options.{o}": ov for o, ov in v.items()})
        else:
            flat[f"data.{k}"] = v
    return flat


def typed_settings(
    data: Mapping[str, Any], base: Mapping[str, Any], spaces: Sequence[SearchSpace], source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec's ``data`` and ``base`` values converted to their declared types (once).

    A ``method.*`` / ``loss.*`` key takes the type the first method / loss that can reach it
    declares (the spec's ``base`` name, else the spaces' names); keys nobody declares are left
    for :func:`validate_space` to report.
    """
    typed_data = {k: convert_key("data", k, v, source) for k, v in data.items()}
    names: dict[str, list[Any]] = {}
    for sec in ("method", "loss"):
        found: list[Any] = [base[f"{sec}.name"]] if f"{sec}.name" in base else []
        for sp in spaces:
            found += [sp.base[f"{sec}.name"]] if f"{sec}.name" in sp.base else []
            for p in sp.params:
                if p.key == f"{sec}.name":
                    found += list(p.dist.representatives())
        names[sec] = found or (["cam"] if sec == "method" else ["bce"])
    typed_base: dict[str, Any] = {}
    for key, value in base.items():
        sec, name = key.split(".", 1)
        typed_base[key] = value
        if sec in ("method", "loss") and name != "name":
            for component in names[sec]:
                try:
                    typed_base[key] = convert_key(sec, name, value, source, component, "base")
                    break
                except ConfigError:
                    continue
        elif sec in SECTIONS:
            typed_base[key] = convert_key(sec, name, value, source, role="base")
    return typed_data, typed_base


def refuse_space_base_conflicts(
    data: Mapping[str, Any], spaces: Sequence[SearchSpace], source: str
) -> None:
    """A spec ``data`` value may not silently replace a space's own ``base`` value."""
    for key, value in flat_data(data).items():
        for sp in spaces:
            if key in sp.base and sp.base[key] != value:
                raise ConfigError(
                    f"{source}: {key} = {value!r} in the spec's data contradicts space "
                    f"{sp.name!r} ({sp.source}), whose base sets {key} = {sp.base[key]!r}; "
                    f"remove one of them, or override the space on purpose with "
                    f"base: {{{key}: {value!r}}}"
                )


def check_dataset_roots(
    context: Mapping[str, Any],
    spaces: Sequence[SearchSpace],
    pins: Mapping[str, Any],
    source: str,
) -> None:
    """Every non-synthetic dataset a trial can read has an existing ``data.root`` (or a cache).

    Checked on the machine that launches the sweep, which for a cluster must see the same
    shared filesystem as the workers.
    """
    for sp in spaces:
        flat = {**sp.base, **context, **pins}
        datasets = [flat.get("data.dataset", "phantom")]
        for p in sp.params:
            if p.key == "data.dataset" and p.key not in pins:
                datasets = list(p.dist.grid()) if hasattr(p.dist, "values") else datasets
        if flat.get("data.cache"):
            continue
        root = flat.get("data.root")
        for ds in datasets:
            if ds == "phantom":
                continue
            if not root:
                raise ConfigError(
                    f"{source}: space {sp.name!r} can train on dataset {ds!r} but no data.root "
                    "is set; give data: {root: /path/to/the/dataset} (or data.cache)"
                )
            if not Path(str(root)).expanduser().is_dir():
                raise ConfigError(
                    f"{source}: data.root = {root!r} for dataset {ds!r} does not exist on this "
                    "machine; give the folder with the dataset's official files"
                )


def apply_overrides(
    raw: Mapping[str, Any], overrides: Mapping[str, Any], source: str, keys: Sequence[str]
) -> dict[str, Any]:
    """Apply ``dotted.path`` overrides onto a parsed spec (a copy); ``keys``: its top-level keys.

    ``base.<section.key>`` sets one flat base key; ``data.options.<opt>`` one data option;
    other paths descend into mappings (``budget.trials``).
    """
    out = plain(dict(raw))
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        check_keys([head], keys, f"{source}: override {key!r}")
        if not rest:
            out[head] = value
            continue
        if head == "base":
            body = out.get("base") or {}
            body[rest] = value
            out["base"] = body
            continue
        node = out.get(head)
        if isinstance(node, str) and head in ("searcher", "early_stopping"):
            node = {"name": node} if head == "searcher" else {"scheduler": node}
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {key!r}: {head!r} is not a mapping")
        out[head] = node
        parts = rest.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {key!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return out
