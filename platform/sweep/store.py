"""The sweep's results store: per-trial Parquet fragments, compacted into the root tables.

Cost per trial event is O(1) in the number of trials: the driver rewrites only the one-row
fragment of the trial that changed, a trial rewrites only its own epoch fragment, and the driver
keeps only trial rows (a few KB each) in memory, never epoch rows. :func:`compact` merges
fragments into ``trials.parquet`` / ``epochs.parquet`` with bounded memory (the epoch rows are
streamed fragment by fragment into one Parquet writer). See :mod:`.results` for the layout and
for how readers see a live sweep.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
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
_BATCH_ROWS = 65_536


def write_epoch_fragment(
    location: SweepLocation, sweep: str, trial_id: str, rows: Iterable[EpochRecord]
) -> None:
    """Write (replace) a trial's epoch fragment: all of its epochs so far (trial side)."""
    table = records_to_table(sorted(rows, key=lambda e: e.epoch), EpochRecord, None, sweep)
    location.write_bytes(fragment_path(EPOCHS_FILE, trial_id), to_parquet_bytes(table))


def read_epochs_of(location: SweepLocation, trial_id: str) -> list[EpochRecord]:
    """A trial's epoch rows: its fragment if it has one, else its rows in ``epochs.parquet``."""
    rel = fragment_path(EPOCHS_FILE, trial_id)
    if location.exists(rel):
        try:
            t = pq.read_table(io.BytesIO(location.read_bytes(rel)))
            return sorted(table_to_records(t, EpochRecord), key=lambda e: e.epoch)
        except FileNotFoundError:
            pass  # compacted meanwhile: read the root file
    if not location.exists(EPOCHS_FILE):
        return []
    t = pq.read_table(
        io.BytesIO(location.read_bytes(EPOCHS_FILE)), filters=[("trial_id", "=", trial_id)]
    )
    return sorted(table_to_records(t, EpochRecord), key=lambda e: e.epoch)


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
        self.location.write_bytes(fragment_path(TRIALS_FILE, rec.trial_id), to_parquet_bytes(table))

    def epochs_of(self, trial_id: str) -> list[EpochRecord]:
        return read_epochs_of(self.location, trial_id)

    def drop_trial(self, trial_id: str) -> None:
        """Forget a trial: its row, its fragments and its rows in the root tables."""
        self.trials.pop(trial_id, None)
        for name in (TRIALS_FILE, EPOCHS_FILE):
            self.location.delete(fragment_path(name, trial_id))
        compact(self.location, drop={trial_id}, only_terminal=False, quiet=True)

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
        ``(trial rows, epoch rows)`` now in the root tables.
    """
    drop = drop or set()
    t_frags = location.list(fragment_dir(TRIALS_FILE), suffix=".parquet")
    e_frags = location.list(fragment_dir(EPOCHS_FILE), suffix=".parquet")
    if not t_frags and not e_frags and not drop:
        return (0, 0)
    try:
        trials = read_table(location, TRIALS_FILE)
    except ConfigError as e:
        if "not found" not in str(e):
            raise
        return (0, 0)
    keep = _terminal_ids(trials) if only_terminal else None
    merge_ids = None if keep is None else keep
    t_sel = _fragments(location, TRIALS_FILE, merge_ids)
    e_sel = _fragments(location, EPOCHS_FILE, merge_ids)
    # trials: small (one row per trial), merged in memory
    root_t = (
        pq.read_table(io.BytesIO(location.read_bytes(TRIALS_FILE)))
        if location.exists(TRIALS_FILE)
        else None
    )
    frag_t = [pq.read_table(io.BytesIO(location.read_bytes(r))) for r in t_sel]
    new_trials = merge_tables(root_t, frag_t) if (root_t is not None or frag_t) else None
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
    ``epochs.parquet`` (temp file + rename); memory is bounded by one batch, not the table."""
    has_root = location.exists(EPOCHS_FILE)
    if not rels and not (has_root and drop):
        return 0
    fs, target = location._fs(location.join(EPOCHS_FILE))
    root_file = pq.ParquetFile(target, filesystem=fs) if has_root else None
    schemas = [root_file.schema_arrow] if root_file is not None else []
    schemas += [pq.read_schema(location._fs(location.join(r))[1], filesystem=fs) for r in rels]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    schema = schema.with_metadata(schemas[0].metadata)
    skip = pa.array(sorted({_trial_of(r) for r in rels} | drop), type=pa.string())

    def conform(t: pa.Table) -> pa.Table:
        cols = [
            t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
            for f in schema
        ]
        return pa.Table.from_arrays(cols, schema=schema)

    def tables() -> Iterator[pa.Table]:
        if root_file is not None:
            for batch in root_file.iter_batches(batch_size=_BATCH_ROWS):
                keep = pc.invert(pc.is_in(batch.column("trial_id"), value_set=skip))
                yield pa.Table.from_batches([batch]).filter(keep)
        for r in rels:
            if _trial_of(r) not in drop:
                yield pq.read_table(location._fs(location.join(r))[1], filesystem=fs)

    tmp = f"{target}.{uuid.uuid4().hex}.compact.tmp"
    n = 0
    pending: list[pa.Table] = []
    try:
        with pq.ParquetWriter(tmp, schema, filesystem=fs, compression="zstd") as writer:
            for t in tables():
                if len(t):
                    pending.append(conform(t))
                    n += len(t)
                if sum(len(p) for p in pending) >= _BATCH_ROWS:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
            if pending:
                writer.write_table(pa.concat_tables(pending))
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
