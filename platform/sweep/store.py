"""The sweep's results store: per-trial Parquet fragments, compacted into the root tables.

Cost per trial event is O(1) in the number of trials: the driver rewrites only the one-row
fragment of the trial that changed, a trial rewrites only its own epoch fragment, and the driver
keeps only trial rows (a few KB each) in memory, never epoch rows. :func:`compact` merges
fragments into ``trials.parquet`` / ``epochs.parquet`` with bounded memory (the epoch rows are
streamed fragment by fragment into one Parquet writer). See :mod:`.results` for the layout and
for how readers see a live sweep.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..errors import ConfigError
from .results import (
    EPOCHS_FILE,
    STATUSES,
    TRIALS_FILE,
    EpochRecord,
    TrialRecord,
    fragment_dir,
    fragment_path,
    merge_tables,
    read_fragments,
    read_root,
    read_table,
    records_to_table,
    table_to_records,
    to_parquet_bytes,
)
from .storage import SweepLocation

__all__ = ["ResultsStore", "compact", "write_epoch_fragment", "read_epochs_of", "TERMINAL"]

log = logging.getLogger("lesionsweep.sweep")

#: trial statuses after which a trial's rows no longer change (its fragments can be compacted)
TERMINAL = frozenset(STATUSES) - {"pending", "running"}
#: rows per write of the compaction (one Parquet row group): ~20 MB of 160 float columns
_BATCH_ROWS = 16_384
_MAX_PENDING = 256


def write_epoch_fragment(
    location: SweepLocation, sweep: str, trial_id: str, rows: Iterable[EpochRecord]
) -> None:
    """Write (replace) a trial's epoch fragment: all of its epochs so far (trial side)."""
    table = records_to_table(sorted(rows, key=lambda e: e.epoch), EpochRecord, None, sweep)
    location.write_bytes(
        fragment_path(EPOCHS_FILE, trial_id), to_parquet_bytes(table), durable=False
    )


def read_epochs_of(
    location: SweepLocation, trial_id: str, headline_only: bool = False
) -> list[EpochRecord]:
    """A trial's epoch rows: its fragment if it has one, else its rows in ``epochs.parquet``.

    Args:
        location: the sweep folder.
        trial_id: the trial.
        headline_only: read only the fixed columns and metrics without a per-class breakdown
            (at most one ``/``): what the trials table needs, a fraction of the columns.
    """
    rel = fragment_path(EPOCHS_FILE, trial_id)
    t = None
    if location.exists(rel):
        try:
            buf = pa.BufferReader(location.read_buffer(rel))
            t = _read_columns(pq.ParquetFile(buf), headline_only)
        except FileNotFoundError:
            t = None  # compacted meanwhile: read the root file
    if t is None:
        if not location.exists(EPOCHS_FILE):
            return []
        fs, path = location._fs(location.join(EPOCHS_FILE))
        cols = None
        if headline_only:
            cols = _headline_columns(pq.read_schema(path, filesystem=fs))
        t = pq.read_table(path, filesystem=fs, columns=cols, filters=[("trial_id", "=", trial_id)])
    return sorted(table_to_records(t, EpochRecord), key=lambda e: e.epoch)


def _headline_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n.count("/") <= 1]


def _read_columns(f: pq.ParquetFile, headline_only: bool) -> pa.Table:
    if not headline_only:
        return f.read()
    return f.read(columns=_headline_columns(f.schema_arrow))


class ResultsStore:
    """Trial rows in memory (O(trials)), each change written as that trial's fragment.

    Args:
        location: the sweep folder.
        sweep: sweep name (stored in the Parquet metadata).
        param_types: parameter key → column type (:meth:`SpaceSet.column_types`).
    """

    def __init__(self, location: SweepLocation, sweep: str, param_types: Mapping[str, str]) -> None:
        self.location = location
        self.sweep = sweep
        self.param_types = dict(param_types)
        self.trials: dict[str, TrialRecord] = {}

    def load(self) -> ResultsStore:
        """Read the trials table (root + fragments): O(trials), no epoch rows."""
        try:
            table = read_table(self.location, TRIALS_FILE)
        except ConfigError as e:
            if "not found" in str(e):
                return self
            raise
        for r in table_to_records(table, TrialRecord):
            self.trials[r.trial_id] = r
        return self

    def upsert_trial(self, rec: TrialRecord, write: bool = True) -> None:
        """Keep ``rec`` and (if ``write``) replace its fragment atomically."""
        self.trials[rec.trial_id] = rec
        if write:
            self.write_trial(rec)

    def write_trial(self, rec: TrialRecord) -> None:
        table = records_to_table([rec], TrialRecord, self.param_types, self.sweep)
        self.location.write_bytes(
            fragment_path(TRIALS_FILE, rec.trial_id), to_parquet_bytes(table), durable=False
        )

    def epochs_of(self, trial_id: str, headline_only: bool = False) -> list[EpochRecord]:
        return read_epochs_of(self.location, trial_id, headline_only)

    def drop_trial(self, trial_id: str) -> None:
        """Forget a trial: its row, its fragments and its rows in the root tables."""
        self.trials.pop(trial_id, None)
        for name in (TRIALS_FILE, EPOCHS_FILE):
            self.location.delete(fragment_path(name, trial_id))
        compact(self.location, drop={trial_id}, only_terminal=True, quiet=True)

    def compact(self, only_terminal: bool = False) -> None:
        """Merge fragments into the root tables (see :func:`compact`)."""
        compact(self.location, only_terminal=only_terminal)

    def flush(self, force: bool = True) -> bool:
        """Write every kept trial row and merge all fragments into the root tables (a test or
        tool building a sweep folder by hand; the driver never needs it). Returns True."""
        for rec in self.trials.values():
            self.write_trial(rec)
        compact(self.location, only_terminal=False, quiet=True)
        return True


def _terminal_ids(trials: pa.Table) -> set[str]:
    mask = pc.is_in(trials.column("status"), value_set=pa.array(sorted(TERMINAL)))
    return set(trials.filter(mask).column("trial_id").to_pylist())


def _fragments(location: SweepLocation, name: str, keep: set[str] | None) -> list[str]:
    rels = location.list(fragment_dir(name), suffix=".parquet")
    if keep is None:
        return rels
    return [r for r in rels if _trial_of(r) in keep]


def compact(
    location: SweepLocation,
    only_terminal: bool = True,
    drop: set[str] | None = None,
    quiet: bool = False,
) -> tuple[int, int]:
    """Merge fragments into the root tables and delete them (root files replaced atomically).

    Args:
        location: the sweep folder.
        only_terminal: merge only the fragments of finished trials (safe while a driver runs;
            a running trial keeps rewriting its fragments).
        drop: trial ids whose rows are removed from the tables.
        quiet: no log line.

    Returns:
        ``(rows of trials.parquet, rows of epochs.parquet)`` after this compaction (a table
        that was not rewritten counts 0).
    """
    drop = drop or set()
    t_frags = location.list(fragment_dir(TRIALS_FILE), suffix=".parquet")
    e_frags = location.list(fragment_dir(EPOCHS_FILE), suffix=".parquet")
    if not t_frags and not e_frags and not drop:
        return (0, 0)
    # trials: one row per trial, read once (fragments first, then the root file)
    frags = read_fragments(location, TRIALS_FILE, t_frags)
    root_t = read_root(location, TRIALS_FILE)
    if root_t is None and not frags:
        return (0, 0)
    keep = _terminal_ids(merge_tables(root_t, frags)) if only_terminal else None
    t_sel = _fragments(location, TRIALS_FILE, keep)
    e_sel = _fragments(location, EPOCHS_FILE, keep)
    if keep is not None:  # running trials keep their fragments (and their old root rows)
        sel = pa.array(sorted(_trial_of(r) for r in t_sel), type=pa.string())
        frags = [f.filter(pc.is_in(f.column("trial_id"), value_set=sel)) for f in frags]
        frags = [f for f in frags if f.num_rows]
    new_trials = merge_tables(root_t, frags) if (root_t is not None or frags) else None
    if new_trials is not None and drop:
        new_trials = new_trials.filter(
            pc.invert(pc.is_in(new_trials.column("trial_id"), value_set=pa.array(sorted(drop))))
        )
    n_epochs = _compact_epochs(location, e_sel, drop)
    if new_trials is not None:
        location.write_bytes(TRIALS_FILE, to_parquet_bytes(new_trials))
    for r in t_sel + e_sel:
        location.delete(r)
    if not quiet:
        log.info("compacted %d + %d fragment(s) into %s", len(t_sel), len(e_sel), location.root)
    return (new_trials.num_rows if new_trials is not None else 0, n_epochs)


def _compact_epochs(location: SweepLocation, rels: list[str], drop: set[str]) -> int:
    """Stream the root epochs (minus replaced/dropped trials) and the fragments into a new
    ``epochs.parquet`` (temp file + rename) with a pyarrow dataset scanner (multi-threaded);
    memory is bounded by the scanner's batches, not the table."""
    has_root = location.exists(EPOCHS_FILE)
    if not rels and not (has_root and drop):
        return 0
    fs, target = location._fs(location.join(EPOCHS_FILE))
    frag_paths = [location._fs(location.join(r))[1] for r in rels if _trial_of(r) not in drop]
    first: pa.Schema | None = pq.read_schema(target, filesystem=fs) if has_root else None
    schema = first
    for p in frag_paths:  # unified one at a time: no list of N schemas in memory
        s = pq.read_schema(p, filesystem=fs)
        first = first or s
        if schema is None:
            schema = s
        elif not s.equals(schema, check_metadata=False):
            schema = pa.unify_schemas([schema, s], promote_options="permissive")
    assert schema is not None and first is not None
    schema = schema.with_metadata(first.metadata)
    skip = pa.array(sorted({_trial_of(r) for r in rels} | drop), type=pa.string())

    def conform(t: pa.Table) -> pa.Table:
        if t.schema.equals(schema, check_metadata=False):
            return t
        cols = [
            t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
            for f in schema
        ]
        return pa.Table.from_arrays(cols, schema=schema)

    def batches() -> Iterator[pa.RecordBatch]:
        if has_root:
            root = ds.dataset(target, format="parquet", filesystem=fs, schema=schema)
            flt = ~pc.field("trial_id").isin(skip)
            yield from root.to_batches(filter=flt, batch_size=_BATCH_ROWS)
        for p in frag_paths:  # one small file at a time: faster than a dataset scan here
            with fs.open_input_file(p) as f:
                yield from conform(pq.ParquetFile(f).read()).to_batches()

    tmp = f"{target}.{uuid.uuid4().hex}.compact.tmp"
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema, filesystem=fs, compression="zstd") as writer:
            pending: list[pa.RecordBatch] = []
            rows = 0
            for b in batches():
                if b.num_rows:
                    pending.append(b)
                    rows += b.num_rows
                    n += b.num_rows
                if rows >= _BATCH_ROWS:
                    writer.write_table(pa.Table.from_batches(pending, schema=schema))
                    pending, rows = [], 0
                elif len(pending) >= _MAX_PENDING:
                    # many tiny batches each hold their own column buffers: copy them into one
                    merged = pa.Table.from_batches(pending, schema=schema).combine_chunks()
                    pending = merged.to_batches()
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema=schema))
        fs.move(tmp, target)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except (FileNotFoundError, OSError):
            pass
        raise
    return n


def _trial_of(rel: str) -> str:
    return rel.rsplit("/", 1)[1].removesuffix(".parquet")
