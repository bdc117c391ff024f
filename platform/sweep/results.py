"""Sweep results as Parquet: one record type per table, one schema derivation, atomic writes.

Two tables live in the sweep folder:

* ``trials.parquet``: one row per trial (:class:`TrialRecord`): id, status (``pending``,
  ``running``, ``completed``, ``pruned``, ``stopped``, ``failed``), space, method, every
  parameter as its own typed column ``param.<key>``, the final and best validation metrics as
  ``final.<metric>`` / ``best.<metric>`` (float64), epochs run, wall time, resources, error, the
  full resolved run config as JSON;
* ``epochs.parquet``: one row per trial per epoch (:class:`EpochRecord`) with every reported
  metric as its own float64 column (named as reported, e.g. ``val/auroc_macro``).

The Arrow schema of each table is derived from its dataclass in :func:`schema_for` (fixed
columns from the field annotations, the dict-valued fields expanded into prefixed columns whose
types come from the search spaces or are float64 for metrics). The schema version and table name
are stored in the Parquet key-value metadata (``lesionsweep.schema_version``,
``lesionsweep.table``).

Live sweeps: append-only per-trial fragments
--------------------------------------------
While a sweep runs, each trial's rows live in its own small Parquet file: the driver writes
``results/trials/<trial_id>.parquet`` (one row) when the trial starts, at most every few seconds
while it runs, and when it ends; the trial itself writes ``results/epochs/<trial_id>.parquet``
(all its epochs) after every epoch. When a sweep or resume ends (and on ``lesionsweep compact
SWEEP``) the fragments of finished trials are merged into ``trials.parquet`` / ``epochs.parquet``
at the sweep root and deleted. Every file is written whole and atomically (temp + rename), so
pandas, pyarrow and duckdb read each of them at any moment. The current state of a live sweep is
:func:`read_table` (root file + fragments, a fragment replacing its trial's rows); in duckdb::

    SELECT * FROM read_parquet(['sweeps/demo/trials.parquet',
                                'sweeps/demo/results/trials/*.parquet'], union_by_name=true)
    QUALIFY row_number() OVER (PARTITION BY trial_id ORDER BY updated_at DESC) = 1

(the glob must match a file: after a finished sweep query ``trials.parquet`` alone)::

    duckdb.sql("SELECT trial_id, \\"param.optim.lr\\", \\"final.val/auroc_macro\\" "
               "FROM 'sweeps/demo/trials.parquet' ORDER BY 3 DESC")

``stopped`` means stopped by the sweep's time budget (not by early stopping, which is
``pruned``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError
from .storage import SweepLocation

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "TrialRecord",
    "EpochRecord",
    "schema_for",
    "records_to_table",
    "table_to_records",
    "read_table",
    "read_fragments",
    "read_root",
    "merge_tables",
    "fragment_dir",
    "fragment_path",
    "to_parquet_bytes",
    "TRIALS_FILE",
    "EPOCHS_FILE",
    "FRAGMENTS_DIR",
]

#: 2: ``run_dir`` relative to the sweep root, ``checkpoint_bytes``
SCHEMA_VERSION = 2
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
FRAGMENTS_DIR = "results"
STATUSES = ("pending", "running", "completed", "pruned", "stopped", "failed")
_META_VERSION = b"lesionsweep.schema_version"
_META_TABLE = b"lesionsweep.table"
_META_SWEEP = b"lesionsweep.sweep"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TrialRecord:
    """One row of ``trials.parquet``.

    Attributes:
        trial_id: Ray Tune's trial id (stable across resume).
        status: one of :data:`STATUSES`.
        space: the search space the trial was drawn from.
        method: ``method.name`` of the trial's run config.
        epochs_run: epochs reported so far.
        best_epoch: epoch of the best value of the first objective metric (None before any).
        objective: final value of the first objective metric (None before any report).
        wall_time_s: seconds from the trial's first report to its last (Ray's ``time_total_s``).
        workers, cpus_per_worker, gpus_per_worker: the trial's resources.
        run_dir: folder with the trial's checkpoints and TensorBoard events, relative to the
            sweep root (``runs/<trial_id>``; empty for an object-store sweep).
        checkpoint_bytes: size of the run folder's ``checkpoints/`` when the trial ended.
        error: why the trial failed (first line of the exception), else None.
        config_json: the complete resolved run config (``RunConfig.to_dict`` as JSON).
        started_at, updated_at: UTC timestamps.
        params: drawn parameters → ``param.<key>`` columns (typed by the spaces).
        final: last reported metrics → ``final.<metric>`` columns.
        best: metrics at ``best_epoch`` → ``best.<metric>`` columns.
    """

    trial_id: str
    status: str
    space: str
    method: str
    epochs_run: int = 0
    best_epoch: int | None = None
    objective: float | None = None
    wall_time_s: float = 0.0
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    run_dir: str = ""
    checkpoint_bytes: int | None = None
    error: str | None = None
    config_json: str = "{}"
    started_at: datetime | None = None
    updated_at: datetime = field(default_factory=_now)
    params: dict[str, Any] = field(default_factory=dict, metadata={"prefix": "param."})
    final: dict[str, float] = field(default_factory=dict, metadata={"prefix": "final."})
    best: dict[str, float] = field(default_factory=dict, metadata={"prefix": "best."})

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")


@dataclass
class EpochRecord:
    """One row of ``epochs.parquet``: a trial's metrics after one epoch.

    Attributes:
        trial_id, space, method: as in :class:`TrialRecord`.
        epoch: 1-based epoch number.
        elapsed_s: seconds since the trial started (Ray's ``time_total_s``).
        reported_at: UTC timestamp of the report.
        metrics: every reported metric → a float64 column named as reported.
    """

    trial_id: str
    space: str
    method: str
    epoch: int
    elapsed_s: float = 0.0
    reported_at: datetime = field(default_factory=_now)
    metrics: dict[str, float] = field(default_factory=dict, metadata={"prefix": ""})


_TABLE_OF = {TrialRecord: "trials", EpochRecord: "epochs"}
_KEY_OF = {TrialRecord: ("trial_id",), EpochRecord: ("trial_id", "epoch")}

_ARROW = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
}
_COLUMN_TYPES = {
    "float64": pa.float64(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}


def _fixed_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "prefix" not in f.metadata]


def _dynamic_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "prefix" in f.metadata]


def schema_for(
    cls: type,
    dynamic: Mapping[str, Mapping[str, str]] | None = None,
    sweep: str = "",
) -> pa.Schema:
    """The Arrow schema of a record type: THE one place a table's columns are defined.

    Args:
        cls: :class:`TrialRecord` or :class:`EpochRecord`.
        dynamic: for each dict-valued field (``params``, ``final``, ``best``, ``metrics``), its
            keys and their column types (``float64``, ``int64``, ``bool``, ``string``).
        sweep: the sweep name stored in the metadata.
    """
    dynamic = dynamic or {}
    cols: list[pa.Field] = []
    for f in _fixed_fields(cls):
        ann = str(f.type).replace(" ", "")
        nullable = "|None" in ann
        base = ann.replace("|None", "")
        cols.append(pa.field(f.name, _ARROW[base], nullable=nullable))
    for f in _dynamic_fields(cls):
        prefix = f.metadata["prefix"]
        for key, t in sorted(dynamic.get(f.name, {}).items()):
            cols.append(pa.field(prefix + key, _COLUMN_TYPES[t], nullable=True))
    meta = {
        _META_VERSION: str(SCHEMA_VERSION).encode(),
        _META_TABLE: _TABLE_OF[cls].encode(),
        _META_SWEEP: sweep.encode(),
    }
    return pa.schema(cols, metadata=meta)


def _cell(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(t):
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if pa.types.is_floating(t):
        try:
            v = float(value)
        except (TypeError, ValueError):
            return None
        return v
    if pa.types.is_integer(t):
        return int(value)
    if pa.types.is_boolean(t):
        return bool(value)
    return value


def _metric_types(records: Iterable[Any], name: str) -> dict[str, str]:
    keys: set[str] = set()
    for r in records:
        keys.update(getattr(r, name))
    return {k: "float64" for k in keys}


def records_to_table(
    records: Iterable[Any],
    cls: type,
    param_types: Mapping[str, str] | None = None,
    sweep: str = "",
) -> pa.Table:
    """Rows → an Arrow table with :func:`schema_for`'s schema.

    Params take their types from ``param_types`` (keys absent there are inferred from values);
    metric dicts are float64 (non-numeric values become null).
    """
    records = list(records)
    dynamic: dict[str, dict[str, str]] = {}
    for f in _dynamic_fields(cls):
        if f.name == "params":
            types = dict(param_types or {})
            for r in records:
                for k, v in r.params.items():
                    if k not in types:
                        types[k] = (
                            "bool"
                            if isinstance(v, bool)
                            else "int64"
                            if isinstance(v, int)
                            else "float64"
                            if isinstance(v, float)
                            else "string"
                        )
            dynamic[f.name] = types
        else:
            dynamic[f.name] = _metric_types(records, f.name)
    schema = schema_for(cls, dynamic, sweep)
    columns: dict[str, list[Any]] = {c.name: [] for c in schema}
    types = {c.name: c.type for c in schema}
    for r in records:
        for f in _fixed_fields(cls):
            columns[f.name].append(_cell(getattr(r, f.name), types[f.name]))
        for f in _dynamic_fields(cls):
            prefix = f.metadata["prefix"]
            d = getattr(r, f.name)
            for key in dynamic[f.name]:
                col = prefix + key
                columns[col].append(_cell(d.get(key), types[col]))
    return pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()}, schema=schema)


def table_to_records(table: pa.Table, cls: type) -> list[Any]:
    """Arrow table (as written by :func:`records_to_table`) → records."""
    fixed = {f.name for f in _fixed_fields(cls)}
    dyn = [(f.name, f.metadata["prefix"]) for f in _dynamic_fields(cls)]
    out = []
    for row in table.to_pylist():
        kwargs: dict[str, Any] = {k: row[k] for k in fixed if k in row}
        for name, prefix in dyn:
            d: dict[str, Any] = {}
            for col, v in row.items():
                if col in fixed or v is None:
                    continue
                if prefix and col.startswith(prefix):
                    d[col[len(prefix) :]] = v
                elif not prefix and not any(p and col.startswith(p) for _, p in dyn):
                    d[col] = v
            kwargs[name] = d
        out.append(cls(**kwargs))
    return out


def to_parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd), for an atomic :meth:`SweepLocation.write_bytes`."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _read_checked(location: SweepLocation, rel: str) -> pa.Table:
    table = pq.ParquetFile(pa.BufferReader(location.read_buffer(rel))).read()
    meta = table.schema.metadata or {}
    version = int(meta.get(_META_VERSION, b"0"))
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{location.join(rel)}: results schema version {version}, this lesionsweep reads "
            f"version {SCHEMA_VERSION}"
        )
    return table


def read_root(location: SweepLocation, name: str) -> pa.Table | None:
    """The root file of a table alone (None if there is none yet), schema version checked."""
    return _read_checked(location, name) if location.exists(name) else None


def fragment_dir(name: str) -> str:
    """The folder (relative to the sweep root) of a table's live fragments."""
    return f"{FRAGMENTS_DIR}/{name.removesuffix('.parquet')}"


def fragment_path(name: str, trial_id: str) -> str:
    """A trial's fragment of a table (relative to the sweep root)."""
    return f"{fragment_dir(name)}/{trial_id}.parquet"


def read_fragments(
    location: SweepLocation, name: str, rels: list[str] | None = None
) -> list[pa.Table]:
    """Live fragments of a table (all, or the files ``rels``), a few tables of many rows.

    A fragment replaced or compacted away meanwhile is skipped: its rows are then in the newer
    fragment or in the root file. Every 256 files are concatenated into one contiguous table,
    so memory is the rows' size, not thousands of tiny tables' buffers.
    """
    out: list[pa.Table] = []
    group: list[pa.Table] = []
    for rel in location.list(fragment_dir(name), suffix=".parquet") if rels is None else rels:
        try:
            group.append(_read_checked(location, rel))
        except (FileNotFoundError, OSError):
            continue
        if len(group) >= 256:
            out.append(pa.concat_tables(group, promote_options="permissive").combine_chunks())
            group = []
    if group:
        out.append(pa.concat_tables(group, promote_options="permissive").combine_chunks())
    return out


def merge_tables(root: pa.Table | None, fragments: list[pa.Table]) -> pa.Table:
    """Root rows whose trial has a fragment are replaced by the fragment's rows.

    Columns are the union (missing ones null); rows sorted by trial id (and epoch).
    """
    if not fragments:
        assert root is not None
        return root
    meta = (root if root is not None else fragments[0]).schema.metadata
    ids = pa.concat_arrays([f.column("trial_id").combine_chunks() for f in fragments])
    parts = list(fragments)
    if root is not None and root.num_rows:
        parts.insert(0, root.filter(pc.invert(pc.is_in(root.column("trial_id"), value_set=ids))))
    t = pa.concat_tables(parts, promote_options="permissive")
    keys = [("trial_id", "ascending")]
    if "epoch" in t.column_names:
        keys.append(("epoch", "ascending"))
    return t.sort_by(keys).replace_schema_metadata(meta)


def read_table(location: SweepLocation, name: str = TRIALS_FILE) -> pa.Table:
    """Read one of the sweep's tables as of now, checking its schema version.

    During a sweep the rows of trials touched since the last compaction live in per-trial
    fragments (``results/<table>/<trial_id>.parquet``); this returns the root file's rows merged
    with them (a fragment replaces its trial's rows). After a sweep or ``lesionsweep compact``
    the root file alone is complete. Fragments are read before the root file, so a compaction
    running meanwhile never hides a row.

    Raises:
        ConfigError: no table at all, or a schema version this code does not read.
    """
    fragments = read_fragments(location, name)
    root = _read_checked(location, name) if location.exists(name) else None
    if root is None and not fragments:
        raise ConfigError(f"{location.join(name)}: not found (is {location.root} a sweep folder?)")
    return merge_tables(root, fragments)


def finite_metrics(metrics: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """Numeric entries of a reported result as floats (NaN kept as NaN; others dropped)."""
    skip = set(skip)
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if k in skip or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif hasattr(v, "item"):
            try:
                x = v.item()
            except (ValueError, TypeError):
                continue
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                out[k] = float(x)
    return out


def is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
