"""Recovery: a driver SIGKILLed at three moments and resumed, a copied sweep, live readers.

The sweep runs in subprocesses (each with its own local Ray) so that its driver can be killed;
this process reads the live tables meanwhile with pandas, pyarrow and duckdb (another process
than the writer) and must never fail to read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from lesionsweep.sweep.commands import resume_sweep
from lesionsweep.sweep.results import read_table
from lesionsweep.sweep.storage import SweepLocation

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]

EPOCHS = 3
TRIALS = 4


def _spec(tmp_path: Path) -> Path:
    body: dict[str, Any] = {
        "name": "rec",
        "data": {
            "dataset": "phantom",
            "image_size": 64,
            "options": {"num_train": 256, "num_val": 16},
        },
        "base": {
            "method.name": "cam",
            "method.backbone": "test_resnet",
            "train.epochs": EPOCHS,
            "train.batch_size": 16,
            "train.log_images": 0,
            "train.device": "cpu",
            "eval.batch_size": 16,
        },
        "spaces": [
            {
                "name": "cam",
                "base": {"method.name": "cam"},
                "parameters": {"optim.lr": {"float": [1e-3, 1e-2], "log": True}},
            }
        ],
        "objective": {"metric": "val/auroc_macro", "mode": "max"},
        "budget": {"trials": TRIALS},
        "concurrency": 1,
        "storage": str(tmp_path),
    }
    p = tmp_path / "rec.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


class _Reader:
    """Reads the live tables as a user would; counts reads and errors."""

    def __init__(self, root: Path) -> None:
        self.root, self.reads, self.errors = root, 0, []  # type: ignore[var-annotated]

    def poll(self) -> pd.DataFrame | None:
        loc = SweepLocation(str(self.root))
        try:
            t = read_table(loc).to_pandas()
            e = read_table(loc, "epochs.parquet").to_pandas()
        except Exception as ex:  # noqa: BLE001
            if "not found" in str(ex):
                return None
            self.errors.append(repr(ex))
            return None
        try:
            for f in [self.root / "trials.parquet", self.root / "epochs.parquet"]:
                if f.exists():
                    pd.read_parquet(f)
                    pq.read_table(f)
            frags = self.root / "results" / "trials"
            if frags.is_dir() and any(frags.glob("*.parquet")):
                duckdb.sql(
                    f"SELECT count(*) FROM read_parquet('{frags}/*.parquet', union_by_name=true)"
                ).fetchall()
            self.reads += 1
        except Exception as ex:  # noqa: BLE001
            if not isinstance(ex, FileNotFoundError):
                self.errors.append(repr(ex))
        t.attrs["epochs"] = e
        return t


def _driver(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _group_alive(pgid: int) -> list[str]:
    """Command lines of processes still in the killed driver's process group."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) == pgid:
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return out


def _kill_when(proc: subprocess.Popen, reader: _Reader, moment: str) -> list[str]:
    """SIGKILL the driver when a running trial is at ``moment``; returns the orphans seen."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        t = reader.poll()
        if t is None:
            continue
        e = t.attrs["epochs"]
        running = t[t.status == "running"]
        if len(running) != 1:
            continue
        tid = running.trial_id.iloc[0]
        n = int((e.trial_id == tid).sum())
        if (
            (moment == "start" and n == 0)
            or (moment == "mid" and 1 <= n < EPOCHS - 1)
            or (moment == "last" and n == EPOCHS - 1)
        ):
            os.kill(proc.pid, signal.SIGKILL)  # the driver only
            break
    proc.wait(timeout=60)
    time.sleep(3)
    orphans = _group_alive(proc.pid)
    try:  # leftovers of the driver's own local Ray (the session helper's job to prevent)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, (moment, proc.stderr.read().decode()[-3000:])
    return orphans


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_driver_killed_at_three_moments_resumes_to_the_budget(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    root = tmp_path / "rec"
    reader = _Reader(root)
    orphans: dict[str, list[str]] = {}
    start = f"from lesionsweep.sweep.commands import run_sweep; run_sweep({str(spec)!r}, progress=False, num_cpus=2)"  # noqa: E501
    resume = f"from lesionsweep.sweep.commands import resume_sweep; resume_sweep({str(root)!r}, progress=False, num_cpus=2)"  # noqa: E501
    orphans["start"] = _kill_when(_driver(start), reader, "start")
    orphans["mid"] = _kill_when(_driver(resume), reader, "mid")
    orphans["last"] = _kill_when(_driver(resume), reader, "last")

    # a copy resumes in itself: the original stays byte-identical
    copy = tmp_path / "copy" / "rec"
    shutil.copytree(root, copy, symlinks=True)
    before = _digest(root)
    summary_b = resume_sweep(copy, progress=False, num_cpus=2)
    assert _digest(root) == before
    summary = resume_sweep(root, progress=False, num_cpus=2)

    for folder, s in ((root, summary), (copy, summary_b)):
        assert not s.interrupted and s.counts.get("completed", 0) >= 1, s.format()
        t = pd.read_parquet(folder / "trials.parquet")
        e = pd.read_parquet(folder / "epochs.parquet")
        assert len(t) == TRIALS and t.trial_id.is_unique, t[["trial_id", "status"]]
        assert set(t.status) == {"completed"}, t[["trial_id", "status", "error"]]
        assert not e.duplicated(["trial_id", "epoch"]).any()
        for _, row in t.iterrows():
            assert row.run_dir == f"runs/{row.trial_id}"
            assert sorted(e[e.trial_id == row.trial_id].epoch) == list(range(1, EPOCHS + 1))
            log = (folder / row.run_dir / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(x)["epoch"] for x in log] == list(range(1, EPOCHS + 1))
        assert not list((folder / "results").rglob("*.parquet"))  # all compacted
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(
            study_name="rec",
            storage=JournalStorage(JournalFileBackend(str(folder / "optuna.journal"))),
        )
        states = [tr.state.name for tr in study.trials]
        assert "RUNNING" not in states and states.count("COMPLETE") == TRIALS, states
    assert reader.reads > 20 and reader.errors == [], reader.errors[:5]
    print(
        f"kill/resume: {TRIALS}/{TRIALS} rows, 0 duplicates, {reader.reads} live reads, "
        f"0 read errors; orphans after each kill: "
        + ", ".join(f"{k}={len(v)} {sorted(set(v))}" for k, v in orphans.items())
    )


def _alive_trial_actors() -> list[dict[str, Any]]:
    """Tune's trial actors of this process's Ray session (GCS actor table, no dashboard)."""
    from ray._private import state

    return [
        a
        for a in state.actors().values()
        if a.get("State") == "ALIVE" and "ImplicitFunc" in str(a.get("ActorClassName"))
    ]


def _small_spec(tmp_path: Path, name: str, **over: Any) -> Path:
    p = _spec(tmp_path)
    body = yaml.safe_load(p.read_text())
    body["name"] = name
    body.update(over)
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    return out


def test_sigkilled_trial_worker_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import threading

    from lesionsweep.sweep.commands import run_sweep

    spec = _small_spec(tmp_path, "wk", budget={"trials": 1})
    run = tmp_path / "wk" / "runs"
    seen: dict[str, Any] = {}

    def killer() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and "pid" not in seen:
            time.sleep(0.3)
            logs = list(run.glob("*/metrics.jsonl"))
            if not logs:
                continue
            lines = logs[0].read_text().splitlines()
            if 1 <= len(lines) < EPOCHS:
                try:
                    actors = _alive_trial_actors()
                except Exception:  # noqa: BLE001 - Ray not up yet
                    continue
                if len(actors) == 1:
                    seen["done_before"] = lines
                    seen["pid"] = int(actors[0]["Pid"])
                    os.kill(seen["pid"], signal.SIGKILL)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    summary = run_sweep(spec, progress=False, num_cpus=2)
    th.join(timeout=5)
    assert "pid" in seen, "the trial worker was never killed"
    assert summary.counts == {"completed": 1}, summary.format()
    t = pd.read_parquet(tmp_path / "wk" / "trials.parquet")
    e = pd.read_parquet(tmp_path / "wk" / "epochs.parquet")
    assert sorted(e.epoch) == list(range(1, EPOCHS + 1))
    log = (tmp_path / "wk" / t.run_dir.iloc[0] / "metrics.jsonl").read_text().splitlines()
    k = len(seen["done_before"])
    # epochs finished before the kill were not trained again: their rows are unchanged
    assert log[:k] == seen["done_before"] and len(log) == EPOCHS
    print(
        f"worker SIGKILL after epoch {k}: completed, epochs lost 0 finished (+ the one in flight)"
    )


def test_node_lost_mid_sweep_all_trials_complete(tmp_path: Path) -> None:
    import threading

    import ray
    from lesionsweep.sweep.commands import run_sweep
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    spec = _small_spec(tmp_path, "node", concurrency=2, budget={"trials": 3})
    run = tmp_path / "node" / "runs"
    seen: dict[str, Any] = {}

    def remover() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.3)
            done = [p for p in run.glob("*/metrics.jsonl") if p.read_text().strip()]
            if done:
                cluster.remove_node(worker, allow_graceful=False)
                seen["removed_after"] = len(done)
                return

    try:
        ray.init(address=cluster.address)
        th = threading.Thread(target=remover, daemon=True)
        th.start()
        summary = run_sweep(spec, progress=False)
        th.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "removed_after" in seen
    assert summary.counts == {"completed": 3}, summary.format()
    t = pd.read_parquet(tmp_path / "node" / "trials.parquet")
    e = pd.read_parquet(tmp_path / "node" / "epochs.parquet")
    assert len(t) == 3 and t.trial_id.is_unique and not e.duplicated(["trial_id", "epoch"]).any()
    assert len(e) == 3 * EPOCHS
    print(f"node loss: 3/3 trials completed, {len(e)} epoch rows, 0 duplicates")


def _tune_known_trials(root: Path) -> set[str]:
    """Trial ids in Tune's last saved experiment state of the sweep folder."""
    states = sorted(root.glob("experiment_state-*.json"))
    assert states, sorted(p.name for p in root.iterdir())
    data = json.loads(states[-1].read_text())
    return {json.loads(t[0])["trial_id"] for t in data["trial_data"]}


def test_trials_ended_after_tunes_last_save_are_recorded_not_redrawn(tmp_path: Path) -> None:
    """Tune saves its experiment state every few seconds; trials that ended after the last save
    of a killed driver are recorded from their run folders on resume, not re-drawn, and the
    sweep still ends at its budget. Here Tune's period is an hour, so its only save comes
    before any trial ended."""
    spec = _small_spec(tmp_path, "late", budget={"trials": 3})
    root = tmp_path / "late"
    code = f"from lesionsweep.sweep.commands import run_sweep; run_sweep({str(spec)!r}, progress=False, num_cpus=2)"  # noqa: E501
    proc = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "3600"},
    )  # fmt: skip
    reader = _Reader(root)
    done: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        t = reader.poll()
        if t is not None and (t.status == "completed").sum() >= 2:
            done = sorted(t[t.status == "completed"].trial_id)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    time.sleep(3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    unknown = set(done) - _tune_known_trials(root)
    assert unknown, (done, "every ended trial was in Tune's saved state: nothing to test")

    summary = resume_sweep(root, progress=False, num_cpus=2)
    assert summary.counts == {"completed": 3}, summary.format()
    t = pd.read_parquet(root / "trials.parquet")
    e = pd.read_parquet(root / "epochs.parquet")
    assert len(t) == 3 and t.trial_id.is_unique and not e.duplicated(["trial_id", "epoch"]).any()
    assert set(done) <= set(t.trial_id), (done, list(t.trial_id))
    for tid in done:
        assert (root / "runs" / tid / "metrics.jsonl").is_file()
        assert not (root / "lost_runs" / tid).exists()
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="late",
        storage=JournalStorage(JournalFileBackend(str(root / "optuna.journal"))),
    )
    states = [tr.state.name for tr in study.trials]
    settled = [tr for tr in study.trials if "lesionsweep_settled" in tr.user_attrs]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == len(settled), states
    redrawn = len(settled)
    print(
        f"ended after Tune's last save: {len(unknown)} of {len(done)} completed trials unknown "
        f"to Tune, recorded; {redrawn} trial(s) cut off mid-way re-drawn; 3/3 rows"
    )
