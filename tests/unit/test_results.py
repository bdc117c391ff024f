"""Results tables: one record type per table, derived Arrow schema, atomic Parquet (no Ray)."""

from __future__ import annotations

import dataclasses
import gc
import math
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lesionsweep.errors import ConfigError
from lesionsweep.sweep.results import (
    EPOCHS_FILE,
    SCHEMA_VERSION,
    TRIALS_FILE,
    EpochRecord,
    TrialRecord,
    fragment_path,
    read_table,
    records_to_table,
    schema_for,
    table_to_records,
)
from lesionsweep.sweep.storage import SweepLocation
from lesionsweep.sweep.store import ResultsStore, compact, write_epoch_fragment

PARAM_TYPES = {
    "optim.lr": "float64",
    "train.batch_size": "int64",
    "method.pooling": "string",
    "method.fc_bn": "bool",
    "multiscale.stages": "string",
}


def _trial(tid: str, status: str = "completed", **kw: object) -> TrialRecord:
    base = dict(
        trial_id=tid,
        status=status,
        space="s",
        method="cam",
        epochs_run=2,
        best_epoch=1,
        objective=0.7,
        params={
            "optim.lr": 1e-3,
            "train.batch_size": 8,
            "method.pooling": "gap",
            "method.fc_bn": True,
        },
        final={"val/auroc_macro": 0.7, "val/loss": 0.5},
        best={"val/auroc_macro": 0.75, "val/loss": 0.6},
    )
    base.update(kw)
    return TrialRecord(**base)  # type: ignore[arg-type]


def test_schema_is_derived_from_the_record_type() -> None:
    schema = schema_for(TrialRecord, {"params": PARAM_TYPES, "final": {"val/a": "float64"}})
    fixed = [
        f.name for f in dataclasses.fields(TrialRecord) if f.name not in ("params", "final", "best")
    ]
    assert schema.names[: len(fixed)] == fixed
    assert schema.field("trial_id").type == pa.string() and not schema.field("trial_id").nullable
    assert schema.field("best_epoch").type == pa.int64() and schema.field("best_epoch").nullable
    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("param.optim.lr").type == pa.float64()
    assert schema.field("param.train.batch_size").type == pa.int64()
    assert schema.field("param.method.fc_bn").type == pa.bool_()
    assert schema.field("final.val/a").type == pa.float64()
    assert schema.metadata[b"lesionsweep.schema_version"] == str(SCHEMA_VERSION).encode()
    assert schema.metadata[b"lesionsweep.table"] == b"trials"
    e = schema_for(EpochRecord, {"metrics": {"val/a": "float64"}})
    assert e.names == ["trial_id", "space", "method", "epoch", "elapsed_s", "reported_at", "val/a"]


def test_round_trip_and_typed_params() -> None:
    recs = [
        _trial("a"),
        _trial(
            "b",
            status="failed",
            error="TrainingError: non-finite loss",
            best_epoch=None,
            params={"optim.lr": 2e-3, "multiscale.stages": [2, 3]},
            final={},
            best={},
        ),
    ]
    t = records_to_table(recs, TrialRecord, PARAM_TYPES, "sw")
    rows = t.to_pylist()
    assert rows[0]["param.train.batch_size"] == 8 and rows[1]["param.train.batch_size"] is None
    assert rows[1]["param.multiscale.stages"] == "[2, 3]"  # non-scalar values as JSON strings
    assert rows[1]["final.val/auroc_macro"] is None and rows[1]["error"].startswith("TrainingError")
    back = table_to_records(t, TrialRecord)
    assert back[0].params == recs[0].params and back[0].final == recs[0].final
    assert back[1].best_epoch is None and back[1].status == "failed"
    with pytest.raises(ValueError, match="status"):
        _trial("c", status="weird")


def test_store_upserts_without_duplicates_and_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "sw"
    loc = SweepLocation(str(root))
    store = ResultsStore(loc, "sw", PARAM_TYPES)
    store.upsert_trial(_trial("a", status="running", epochs_run=1))
    rows = []
    for ep in (1, 2, 2):  # epoch 2 re-reported after a resume
        rows = [r for r in rows if r.epoch != ep]
        rows.append(
            EpochRecord("a", "s", "cam", ep, elapsed_s=ep, metrics={"val/auroc_macro": ep / 10})
        )
        write_epoch_fragment(loc, "sw", "a", rows)
    store.upsert_trial(_trial("a"))
    # live: only fragments, read through read_table (and each fragment readable alone)
    assert not (root / TRIALS_FILE).exists()
    assert read_table(loc).column("status").to_pylist() == ["completed"]
    assert read_table(loc, EPOCHS_FILE).column("epoch").to_pylist() == [1, 2]
    assert len(pd.read_parquet(root / fragment_path(TRIALS_FILE, "a"))) == 1
    # compaction: root tables only, fragments gone
    assert compact(loc) == (1, 2)
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [EPOCHS_FILE, TRIALS_FILE]
    assert list((root / "results" / "trials").iterdir()) == []
    again = ResultsStore(loc, "sw", PARAM_TYPES).load()
    assert list(again.trials) == ["a"] and again.trials["a"].status == "completed"
    assert [e.epoch for e in again.epochs_of("a")] == [1, 2]
    # readable without help
    df = pd.read_parquet(root / TRIALS_FILE)
    assert df.loc[0, "param.optim.lr"] == 1e-3 and df["param.train.batch_size"].dtype.kind == "i"
    n = duckdb.sql(f"SELECT count(*) FROM '{root / EPOCHS_FILE}' WHERE epoch = 2")
    assert n.fetchall() == [(1,)]
    best = duckdb.sql(
        f"SELECT trial_id, \"final.val/auroc_macro\" FROM '{root / TRIALS_FILE}'"
    ).fetchall()
    assert best == [("a", 0.7)]
    assert pq.read_schema(root / TRIALS_FILE).metadata[b"lesionsweep.table"] == b"trials"


def test_fragments_replace_root_rows_and_compaction_keeps_running_trials(tmp_path: Path) -> None:
    loc = SweepLocation(str(tmp_path))
    store = ResultsStore(loc, "sw", PARAM_TYPES)
    store.upsert_trial(_trial("a"))
    store.upsert_trial(_trial("b", status="running"))
    ep = [EpochRecord("a", "s", "cam", 1, metrics={"val/x": 1.0})]
    write_epoch_fragment(loc, "sw", "a", ep)
    write_epoch_fragment(loc, "sw", "b", [EpochRecord("b", "s", "cam", 1, metrics={"val/y": 2.0})])
    assert compact(loc, only_terminal=True) == (1, 1)  # b is running: its fragments stay
    assert (tmp_path / fragment_path(TRIALS_FILE, "b")).is_file()
    store.upsert_trial(_trial("b", objective=0.9))  # b ends
    t = read_table(loc)
    assert t.column("trial_id").to_pylist() == ["a", "b"]
    assert t.column("status").to_pylist() == ["completed", "completed"]
    assert t.column("objective").to_pylist() == [0.7, 0.9]
    e = read_table(loc, EPOCHS_FILE)  # union of columns, no duplicate
    assert e.column("trial_id").to_pylist() == ["a", "b"] and {"val/x", "val/y"} <= set(
        e.column_names
    )
    compact(loc, only_terminal=True)
    assert pd.read_parquet(tmp_path / EPOCHS_FILE)["val/y"].tolist()[1] == 2.0
    store.drop_trial("a")
    assert read_table(loc).column("trial_id").to_pylist() == ["b"]
    assert read_table(loc, EPOCHS_FILE).column("trial_id").to_pylist() == ["b"]


def test_parquet_reads_never_hand_arrow_python_owned_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python ``bytes``/file object given to Arrow is released by Arrow's decode threads,
    which must take the GIL; when that happens while the interpreter exits, the process aborts
    (a CLI driver exited with SIGABRT in CI). Every reader gets an Arrow-owned source."""
    loc = SweepLocation(str(tmp_path))
    store = ResultsStore(loc, "sw", PARAM_TYPES)
    store.upsert_trial(_trial("a"))
    write_epoch_fragment(loc, "sw", "a", [EpochRecord("a", "s", "cam", 1, metrics={"v": 1.0})])
    sources: list[object] = []
    real = pq.ParquetFile

    def spy(source: object, *a: object, **kw: object) -> pq.ParquetFile:
        sources.append(source)
        return real(source, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pq, "ParquetFile", spy)
    assert read_table(loc).column("trial_id").to_pylist() == ["a"]
    assert [e.epoch for e in ResultsStore(loc, "sw", PARAM_TYPES).load().epochs_of("a")] == [1]
    compact(loc)
    assert sources and all(isinstance(s, pa.NativeFile) for s in sources), sources
    # ... and a BufferReader's buffer is Arrow's own: allocated from Arrow's memory pool (a
    # buffer wrapping Python bytes, as pyarrow's read_buffer() makes on a sequential stream,
    # allocates nothing there)
    rel = fragment_path(TRIALS_FILE, "a")
    store.upsert_trial(_trial("a"))
    gc.collect()  # nothing of Arrow's is freed while the read is measured
    before = pa.total_allocated_bytes()
    buf = loc.read_buffer(rel)
    assert pa.total_allocated_bytes() - before >= buf.size > 0


def test_failed_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    loc = SweepLocation(str(tmp_path))
    store = ResultsStore(loc, "sw", PARAM_TYPES)
    store.upsert_trial(_trial("a"))
    path = tmp_path / fragment_path(TRIALS_FILE, "a")
    before = path.read_bytes()
    with pytest.raises(ValueError):
        store.upsert_trial(_trial("a", params={"train.batch_size": "not an int"}))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_schema_version_is_checked(tmp_path: Path) -> None:
    t = pa.table({"trial_id": ["a"]}).replace_schema_metadata(
        {b"lesionsweep.schema_version": b"99"}
    )
    pq.write_table(t, tmp_path / TRIALS_FILE)
    with pytest.raises(ConfigError, match="schema version 99"):
        read_table(SweepLocation(str(tmp_path)))
    with pytest.raises(ConfigError, match="not found"):
        read_table(SweepLocation(str(tmp_path / "none")))


def test_nan_metrics_stay_nan() -> None:
    t = records_to_table([_trial("a", final={"val/loss": float("nan")})], TrialRecord, {}, "sw")
    assert math.isnan(t.column("final.val/loss")[0].as_py())


def test_compact_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lesionsweep.cli import main

    root = tmp_path / "sw"
    loc = SweepLocation(str(root))
    store = ResultsStore(loc, "sw", PARAM_TYPES)
    store.upsert_trial(_trial("a"))
    store.upsert_trial(_trial("b", status="running"))
    write_epoch_fragment(loc, "sw", "a", [EpochRecord("a", "s", "cam", 1, metrics={"v/x": 1.0})])
    assert main(["compact", str(root)]) == 2  # not a sweep folder (no sweep.yaml)
    (root / "sweep.yaml").write_text("name: sw\n")
    assert main(["compact", str(root)]) == 0
    assert "1 trial row(s), 1 epoch row(s)" in capsys.readouterr().out
    assert pd.read_parquet(root / TRIALS_FILE).trial_id.tolist() == ["a"]
    assert read_table(loc).column("trial_id").to_pylist() == ["a", "b"]  # b: still a fragment
    assert main(["compact", str(root), "--all"]) == 0
    assert pd.read_parquet(root / TRIALS_FILE).trial_id.tolist() == ["a", "b"]
