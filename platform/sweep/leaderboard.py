"""The sweep's ranking: ``lesionsweep leaderboard SWEEP [--by PARAM] [--top K]``.

Rows come from ``trials.parquet``; the ranking is on the sweep's own objective (the first metric
of ``sweep.yaml``'s ``objective``, its final-epoch value, the value the searcher was told).
Completed trials rank first, then pruned/stopped ones (fewer epochs: not comparable on equal
terms), then trials without a value. Grouping by a parameter (``--by method.pooling``) ranks each
value's trials separately; ``method`` and ``space`` group by those columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..ranking import order_sign
from .report.data import SweepData, objective_value

__all__ = ["Leaderboard", "build_leaderboard", "format_table", "HEADLINE"]

#: localization headline metrics shown next to the objective (suffixes after ``<split>/``)
HEADLINE = ("auroc_macro", "point_acc_macro", "iobb@0.5", "maxboxacc_v2", "pxap")
_STATUS_ORDER = {"completed": 0, "pruned": 1, "stopped": 1, "running": 2, "pending": 3, "failed": 4}


@dataclass
class Leaderboard:
    """A ranked table.

    Attributes:
        columns: header names.
        groups: ``(group label, rows)``; a row is a list of cells aligned with ``columns``
            (str, int, float or None); the label is ``""`` without ``--by``.
        metric, mode: the ranking metric and its direction.
        by: the grouping key or None.
        total: trials in the sweep.
    """

    columns: list[str]
    groups: list[tuple[str, list[list[Any]]]]
    metric: str
    mode: str
    by: str | None
    total: int


def _varying_params(data: SweepData) -> list[str]:
    out = []
    for key in data.params:
        vals = {
            repr(r.get(f"param.{key}")) for r in data.trials if r.get(f"param.{key}") is not None
        }
        if len(vals) > 1:
            out.append(key)
    return out


def _headline_columns(data: SweepData) -> list[str]:
    """``final.<split>/<headline>`` columns present in the table (objective excluded)."""
    cols: set[str] = set()
    for r in data.trials:
        cols.update(k for k in r if k.startswith("final.") and r[k] is not None)
    out = []
    for suffix in HEADLINE:
        for c in sorted(cols):
            metric = c[len("final.") :]
            if metric.split("/", 1)[-1] == suffix and metric not in data.metrics:
                out.append(metric)
                break
    return out


def _sort_key(row: Mapping[str, Any], metric: str, mode: str) -> tuple[int, float, str]:
    v = objective_value(row, metric)
    sign = order_sign(mode)
    return (
        _STATUS_ORDER.get(str(row.get("status")), 5) if v is not None else 9,
        sign * v if v is not None else math.inf,
        str(row["trial_id"]),
    )


def _group_of(row: Mapping[str, Any], by: str) -> str:
    v = row.get(by) if by in ("method", "space", "status") else row.get(f"param.{by}")
    return "(not drawn)" if v is None else str(v)


def build_leaderboard(data: SweepData, by: str | None = None, top: int | None = 10) -> Leaderboard:
    """Rank the sweep's trials on its objective.

    Args:
        data: the sweep (:func:`~lesionsweep.sweep.report.data.load_sweep`).
        by: a parameter key (``method.pooling``), ``method`` or ``space``; None: one ranking.
        top: rows per group (None: all).

    Raises:
        ConfigError: ``by`` names no parameter of the sweep, or ``top < 1``.
    """
    if top is not None and top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if by is not None and by not in ("method", "space", "status") and by not in data.params:
        allowed = ", ".join(["method", "space", *data.params])
        raise ConfigError(
            f"--by {by!r}: not a parameter of sweep {data.name!r}; allowed: {allowed}"
        )
    params = [p for p in _varying_params(data) if p not in (by, "method.name")]
    headline = _headline_columns(data)
    columns = ["rank", "trial", "method", "status", *data.metrics, "epochs", *headline, *params]
    buckets: dict[str, list[dict[str, Any]]] = {}
    for r in data.trials:
        buckets.setdefault(_group_of(r, by) if by else "", []).append(r)

    def best(rows: Sequence[Mapping[str, Any]]) -> tuple[int, float, str]:
        return _sort_key(
            min(rows, key=lambda r: _sort_key(r, data.metric, data.mode)), data.metric, data.mode
        )

    groups = []
    for label, rows in sorted(buckets.items(), key=lambda kv: (best(kv[1]), kv[0])):
        ranked = sorted(rows, key=lambda r: _sort_key(r, data.metric, data.mode))
        if top is not None:
            ranked = ranked[:top]
        cells = []
        for i, r in enumerate(ranked, start=1):
            cells.append(
                [
                    i,
                    r["trial_id"],
                    r["method"],
                    r["status"],
                    *[objective_value(r, m) for m in data.metrics],
                    r.get("epochs_run"),
                    *[objective_value(r, m) for m in headline],
                    *[r.get(f"param.{p}") for p in params],
                ]
            )
        groups.append((label, cells))
    return Leaderboard(columns, groups, data.metric, data.mode, by, len(data.trials))


def fmt_cell(v: Any) -> str:
    """A cell as text: floats with 4 significant digits, None as ``-``."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "nan"
    return str(v)


def format_table(board: Leaderboard) -> str:
    """The leaderboard as aligned plain text (one block per group)."""
    lines = [
        f"ranked on final {board.metric} ({board.mode}); {board.total} trial(s)"
        + (f", grouped by {board.by}" if board.by else "")
    ]
    for label, rows in board.groups:
        text = [board.columns] + [[fmt_cell(c) for c in row] for row in rows]
        widths = [max(len(r[i]) for r in text) for i in range(len(board.columns))]
        if board.by:
            lines.append("")
            lines.append(f"{board.by} = {label}")
        for j, r in enumerate(text):
            lines.append(
                "  ".join(
                    c.rjust(w) if j else c.ljust(w) for c, w in zip(r, widths, strict=True)
                ).rstrip()
            )
    return "\n".join(lines)
