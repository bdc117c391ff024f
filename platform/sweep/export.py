"""Export the best configs of a sweep as run-config YAML files that ``lesionsweep train`` runs.

Ranking uses ``trials.parquet``: only ``completed`` trials (trained for their full length;
pruned, stopped and failed trials are left out) with a finite objective value. By default the
value is the *final* epoch's metric (what the searcher was told; the wsolevaluation protocol
recommends the last checkpoint); ``by="best"`` ranks on the best epoch's value instead.

* top-k: the ``k`` best trials on the (first) objective metric;
* per method: the top-k of every method separately;
* Pareto: every completed trial that no other completed trial dominates on all objective
  metrics (multi-objective sweeps).

Each file is the trial's complete resolved run config (:func:`lesionsweep.config.dump_config`),
so ``lesionsweep train <file>`` retrains it as it ran in the sweep (same seed, same epochs), with
one exception: a ``data.cache`` the sweep prepared itself (its data cache store, see
:mod:`lesionsweep.sweep.datacache`) is left out, since it holds only the splits trials read and
``lesionsweep evaluate`` needs the test split. An ``index.csv`` next to them lists rank, trial,
method and objective values.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, config_from_dict, dump_config
from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..ranking import order_sign
from .datakey import store_folder
from .results import TRIALS_FILE, read_table
from .storage import SweepLocation

__all__ = [
    "Exported",
    "read_objective",
    "select_trials",
    "pareto_front",
    "export_sweep",
    "SPEC_FILE",
]

#: the resolved spec written into every sweep folder
SPEC_FILE = "sweep.yaml"


@dataclass(frozen=True)
class Exported:
    """One exported config: its file, trial, method, rank and objective values."""

    path: Path
    trial_id: str
    method: str
    rank: int
    values: Mapping[str, float]
    group: str


def read_objective(location: SweepLocation) -> tuple[list[str], list[str]]:
    """``(metrics, modes)`` of a sweep from its ``sweep.yaml``."""
    if not location.exists(SPEC_FILE):
        raise ConfigError(
            f"{location.join(SPEC_FILE)}: not found (is {location.root} a sweep folder?)"
        )
    raw = yaml.safe_load(location.read_bytes(SPEC_FILE).decode()) or {}
    obj = raw.get("objective") or {}
    return list(obj.get("metrics") or []), list(obj.get("modes") or [])


def _value(row: Mapping[str, Any], metric: str, by: str) -> float | None:
    v = row.get(f"{by}.{metric}")
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def select_trials(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    mode: str,
    top_k: int = 1,
    by: str = "final",
) -> list[Mapping[str, Any]]:
    """The ``top_k`` completed rows with a finite ``<by>.<metric>``, best first.

    Ties keep the trial-id order (deterministic).
    """
    ok = [r for r in rows if r.get("status") == "completed" and _value(r, metric, by) is not None]
    ok.sort(key=lambda r: r["trial_id"])
    sign = order_sign(mode)
    ok.sort(key=lambda r: sign * _value(r, metric, by))
    return ok[:top_k]


def pareto_front(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    modes: Sequence[str],
    by: str = "final",
) -> list[Mapping[str, Any]]:
    """Completed rows not dominated on ``metrics``, sorted by the first metric (best first).

    Row a dominates b if a is at least as good on every metric and better on one.
    """
    pts: list[tuple[Mapping[str, Any], list[float]]] = []
    for r in rows:
        if r.get("status") != "completed":
            continue
        vals = [_value(r, m, by) for m in metrics]
        clean = [v for v in vals if v is not None]
        if len(clean) != len(vals):
            continue
        signed = [-order_sign(mode) * v for v, mode in zip(clean, modes, strict=True)]
        pts.append((r, signed))
    front = []
    for r, a in pts:
        dominated = any(
            all(x >= y for x, y in zip(b, a, strict=True))
            and any(x > y for x, y in zip(b, a, strict=True))
            for _, b in pts
        )
        if not dominated:
            front.append((r, a))
    front.sort(key=lambda t: (-t[1][0], t[0]["trial_id"]))
    return [r for r, _ in front]


def standalone_config(loc: SweepLocation, row: Mapping[str, Any]) -> RunConfig:
    """A trial's run config as it runs outside its sweep: its ``config_json`` without the
    ``data.cache`` the sweep prepared (that cache holds only the splits trials read, never the
    test split ``lesionsweep evaluate`` and ``study`` need); a cache the user named stays."""
    raw = yaml.safe_load(loc.read_bytes(SPEC_FILE).decode()) or {}
    store = store_folder(str(raw.get("data_cache") or "none"), loc.root)
    cfg = config_from_dict(
        json.loads(row["config_json"]), source=f"{loc.join(TRIALS_FILE)} {row['trial_id']}"
    )
    if store is not None and cfg.data.cache and Path(cfg.data.cache).parent == store:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, cache=None))
    return cfg


def export_sweep(
    sweep: str | Path,
    top_k: int = 1,
    per_method: bool = False,
    pareto: bool = False,
    out_dir: str | Path | None = None,
    by: str = "final",
) -> list[Exported]:
    """Write the selected trials' run configs as YAML.

    Args:
        sweep: the sweep folder (path or URI).
        top_k: how many configs per group (overall, or per method).
        per_method: rank each method separately.
        pareto: export the Pareto front of a multi-objective sweep instead of a top-k.
        out_dir: where to write (default ``<sweep>/exports``; required for an object-store sweep).
        by: ``final`` (default) or ``best`` epoch values.

    Returns:
        The exported files, in rank order.

    Raises:
        ConfigError: not a sweep folder, no completed trial, or a bad option.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if by not in ("final", "best"):
        raise ConfigError(f"by = {by!r}: choose final or best")
    loc = SweepLocation.parse(sweep)
    metrics, modes = read_objective(loc)
    if not metrics:
        raise ConfigError(f"{loc.join(SPEC_FILE)}: no objective metrics recorded")
    rows = read_table(loc, TRIALS_FILE).to_pylist()
    if out_dir is None:
        if not loc.is_local:
            raise ConfigError(f"{loc.root} is not a local folder: give --out for the exports")
        out = Path(loc.root) / "exports"
    else:
        out = Path(out_dir)

    groups: list[tuple[str, list[Mapping[str, Any]]]] = []
    if pareto:
        if len(metrics) < 2:
            raise ConfigError(
                f"--pareto needs a multi-objective sweep; {loc.root} optimises {metrics[0]!r} only"
            )
        if per_method:
            for m in sorted({r["method"] for r in rows}):
                sub = [r for r in rows if r["method"] == m]
                groups.append((f"pareto_{m}", pareto_front(sub, metrics, modes, by)))
        else:
            groups.append(("pareto", pareto_front(rows, metrics, modes, by)))
    elif per_method:
        for m in sorted({r["method"] for r in rows}):
            sub = [r for r in rows if r["method"] == m]
            groups.append((f"best_{m}", select_trials(sub, metrics[0], modes[0], top_k, by)))
    else:
        groups.append(("best", select_trials(rows, metrics[0], modes[0], top_k, by)))

    if not any(sel for _, sel in groups):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        raise ConfigError(
            f"{loc.root}: no completed trial with a finite {by}.{metrics[0]} to export "
            f"(trials by status: {counts or 'none'})"
        )
    exported: list[Exported] = []
    for group, sel in groups:
        for rank, row in enumerate(sel, start=1):
            cfg = standalone_config(loc, row)
            single = len(sel) == 1 and not pareto
            name = f"{group}.yaml" if single else f"{group}_{rank:02d}_{row['trial_id']}.yaml"
            path = out / name
            dump_config(cfg, path)
            exported.append(
                Exported(
                    path=path,
                    trial_id=row["trial_id"],
                    method=row["method"],
                    rank=rank,
                    values={m: _value(row, m, by) for m in metrics},  # type: ignore[misc]
                    group=group,
                )
            )
    _write_index(out / "index.csv", exported, metrics, by)
    return exported


def _write_index(path: Path, exported: Sequence[Exported], metrics: Sequence[str], by: str) -> None:
    """Write ``index.csv``: this export's rows replace earlier rows of the same groups."""
    header = ["group", "rank", "trial_id", "method", *[f"{by}.{m}" for m in metrics], "file"]
    groups = {e.group for e in exported}
    old: list[list[str]] = []
    if path.is_file():
        rows = list(csv.reader(io.StringIO(path.read_text())))
        if rows and rows[0] == header:
            old = [r for r in rows[1:] if r and r[0] not in groups]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in old:
        w.writerow(r)
    for e in exported:
        w.writerow(
            [e.group, e.rank, e.trial_id, e.method, *[e.values[m] for m in metrics], e.path.name]
        )
    atomic_write_text(path, buf.getvalue())
