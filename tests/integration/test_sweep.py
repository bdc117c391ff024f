"""End-to-end sweeps on ONE local Ray session (num_cpus=2) shared by the module.

Tiny phantom (64 px, a few dozen images), ``test_resnet``, 1-3 epochs per trial.
"""

from __future__ import annotations

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
from lesionsweep.config import load_config
from lesionsweep.errors import ConfigError
from lesionsweep.sweep import backend
from lesionsweep.sweep.commands import resume_sweep, run_sweep
from lesionsweep.sweep.results import SCHEMA_VERSION, read_table
from lesionsweep.sweep.storage import SweepLocation

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

CAM = {
    "name": "cam",
    "base": {"method.name": "cam"},
    "parameters": {
        "method.pooling": {"choice": ["gap", "lse"]},
        "method.lse_r": {"float": [2.0, 8.0], "when": {"method.pooling": "lse"}},
        "optim.lr": {"float": [1e-3, 1e-2], "log": True},
    },
}
MSC = {
    "name": "msc",
    "base": {"method.name": "multiscale_cam"},
    "parameters": {"optim.lr": {"float": [1e-3, 1e-2], "log": True}},
}


def _lr_space(name: str, lr: float) -> dict:
    return {"name": name, "base": {"method.name": "cam"}, "parameters": {"optim.lr": {"const": lr}}}


def _spec(tmp_path: Path, name: str, **over: Any) -> Path:
    body: dict[str, Any] = {
        "name": name,
        "data": {
            "dataset": "phantom",
            "image_size": 64,
            "options": {"num_train": 32, "num_val": 16},
        },
        "base": {
            "method.backbone": "test_resnet",
            "train.epochs": 2,
            "train.batch_size": 16,
            "train.log_images": 1,
            "train.device": "cpu",
            "eval.batch_size": 16,
        },
        "spaces": [CAM],
        "objective": {"metric": "val/auroc_macro", "mode": "max"},
        "budget": {"trials": 2},
        "concurrency": 2,
        "storage": str(tmp_path),
    }
    for k, v in over.items():
        if k == "base":
            body["base"].update(v)
        else:
            body[k] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def ray_session() -> Any:
    import ray

    started = backend.init_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


def _study(root: Path) -> Any:
    """The sweep's Optuna study, opened from its journal file as optuna-dashboard would."""
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / backend.JOURNAL_FILE))
    )
    return optuna.load_study(study_name=root.name, storage=storage)


def _hparams_events(logdir: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    out: dict[str, Any] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                    content = v.metadata.plugin_data.content
                    if v.tag == metadata.SESSION_START_INFO_TAG:
                        out["start"] = metadata.parse_session_start_info_plugin_data(content)
                    elif v.tag == metadata.SESSION_END_INFO_TAG:
                        out["end"] = metadata.parse_session_end_info_plugin_data(content)
                elif v.tag == "trial/status":
                    from tensorboard.util import tensor_util

                    out["status_code"] = float(tensor_util.make_ndarray(v.tensor))
                elif v.tag == "val/auroc_macro":
                    out.setdefault("scalars", 0)
                    out["scalars"] += 1
    return out


def test_two_trial_sweep_end_to_end(tmp_path: Path, ray_session: Any) -> None:
    spec = _spec(tmp_path, "e2e", spaces=[CAM, MSC])
    summary = run_sweep(spec, progress=False)
    root = tmp_path / "e2e"
    assert summary.counts == {"completed": 2} and not summary.interrupted
    assert {b.method for b in summary.best_per_method} == {"cam", "multiscale_cam"}

    # Parquet: one row per trial, one per trial-epoch, typed params, versioned schema
    trials = pq.read_table(root / "trials.parquet")
    assert trials.schema.metadata[b"lesionsweep.schema_version"] == str(SCHEMA_VERSION).encode()
    df = trials.to_pandas()
    assert sorted(df["space"]) == ["cam", "msc"]  # round robin over the two spaces
    assert set(df["status"]) == {"completed"} and list(df["epochs_run"]) == [2, 2]
    assert trials.schema.field("param.optim.lr").type == "double"
    assert trials.schema.field("param.method.pooling").type == "string"
    cam_row = df[df["space"] == "cam"].iloc[0]
    assert ("param.method.lse_r" in df) and (
        pd.isna(cam_row["param.method.lse_r"]) == (cam_row["param.method.pooling"] != "lse")
    )
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert len(epochs) == 4 and not epochs.duplicated(["trial_id", "epoch"]).any()
    path = root / "trials.parquet"
    n = duckdb.sql(
        f"SELECT count(*) FROM '{path}' WHERE \"final.val/auroc_macro\" IS NOT NULL"
    ).fetchall()
    assert n == [(2,)]

    # TensorBoard: every trial's curves and overlays plus its HParams session, under the sweep
    for _, row in df.iterrows():
        assert row["run_dir"] == f"runs/{row['trial_id']}"  # relative to the sweep root
        tb = root / row["run_dir"] / "tensorboard"
        assert row["checkpoint_bytes"] > 0
        ev = _hparams_events(tb)
        assert ev["scalars"] == 2
        hp = ev["start"].hparams
        assert hp["method"].string_value == row["method"] and "optim.lr" in hp
        assert ev["end"].status == 1 and ev["status_code"] == 1.0  # STATUS_SUCCESS, completed

    # export: the best config, retrained outside Ray, reproduces its sweep metric
    best = Path(next(p for p in summary.exported if p.endswith("best.yaml")))
    cfg = load_config(best)
    trial = df.loc[df["final.val/auroc_macro"].idxmax()]
    ran = json.loads(trial["config_json"])
    # the trial read the sweep's data cache; the export reads the dataset (same bytes)
    assert Path(ran["data"].pop("cache")).parent == root / "data-cache"
    ran["data"]["cache"] = None
    assert ran == cfg.to_dict()
    from lesionsweep.training import run_training

    again = run_training(cfg, tmp_path / "retrain")
    assert again.final["val/auroc_macro"] == pytest.approx(trial["final.val/auroc_macro"], abs=1e-6)

    with pytest.raises(ConfigError, match="already exists.*lesionsweep resume"):
        run_sweep(spec, progress=False)


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path, ray_session: Any) -> None:
    spec = _spec(
        tmp_path, "fail", spaces=[_lr_space("ok", 1e-3), _lr_space("bad", 1e12)],
        base={"train.epochs": 1},
    )  # fmt: skip
    summary = run_sweep(spec, progress=False)
    assert summary.counts == {"completed": 1, "failed": 1}
    df = pd.read_parquet(tmp_path / "fail" / "trials.parquet").set_index("space")
    assert df.loc["bad", "status"] == "failed"
    assert "TrainingError" in df.loc["bad", "error"] and "non-finite" in df.loc["bad", "error"]
    assert pd.isna(df.loc["ok", "error"])


def test_unreported_objective_metric_stops_the_sweep(tmp_path: Path, ray_session: Any) -> None:
    spec = _spec(tmp_path, "nometric", objective={"metric": "val/nope", "mode": "max"},
                 base={"train.epochs": 1}, budget={"trials": 3})  # fmt: skip
    with pytest.raises(ConfigError, match=r"val/nope.*not reported by the trainer"):
        run_sweep(spec, progress=False)


def test_trial_with_two_cpu_workers_under_ray_train(tmp_path: Path, ray_session: Any) -> None:
    spec = _spec(
        tmp_path, "ddp", budget={"trials": 1}, concurrency=1, base={"train.epochs": 1},
        resources={"workers": 2, "cpus_per_worker": 0.5},
    )  # fmt: skip
    t0 = time.monotonic()
    summary = run_sweep(spec, progress=False)
    wall = time.monotonic() - t0
    assert summary.counts == {"completed": 1}, summary.format()
    df = pd.read_parquet(tmp_path / "ddp" / "trials.parquet")
    assert df.loc[0, "workers"] == 2 and df.loc[0, "cpus_per_worker"] == 0.5
    run = tmp_path / "ddp" / df.loc[0, "run_dir"]
    # default checkpoint policy: the weights-only best.pt stays, the resumable last.pt is removed
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt"]
    assert any((tmp_path / "ddp" / "train_runs").glob("train-*"))
    print(f"2-worker Ray Train trial: {wall:.1f} s end to end")


def test_multi_objective_pareto(tmp_path: Path, ray_session: Any) -> None:
    spec = _spec(
        tmp_path, "mo", objective={"metrics": ["val/auroc_macro", "lr"], "modes": ["max", "min"]},
        base={"train.epochs": 1}, budget={"trials": 3},
    )  # fmt: skip
    summary = run_sweep(spec, progress=False)
    assert summary.counts == {"completed": 3}
    assert summary.exported and all("pareto_" in p for p in summary.exported)
    study = _study(tmp_path / "mo")
    assert study is not None and len(study.directions) == 2
    assert len(study.best_trials) == len(summary.exported)


def test_asha_pruned_trials_are_pruned_in_optuna(tmp_path: Path, ray_session: Any) -> None:
    # objective "lr" makes ASHA's decisions deterministic: space b's trials (tiny lr) are pruned
    spec = _spec(
        tmp_path, "asha", spaces=[_lr_space("a", 1e-2), _lr_space("b", 1e-5)],
        objective={"metric": "lr", "mode": "max"}, base={"train.epochs": 3},
        early_stopping={"scheduler": "asha", "grace_period": 1, "reduction_factor": 2},
        budget={"trials": 4}, concurrency=1,
    )  # fmt: skip
    summary = run_sweep(spec, progress=False)
    assert summary.counts == {"completed": 2, "pruned": 2}
    df = pd.read_parquet(tmp_path / "asha" / "trials.parquet").sort_values("trial_id")
    assert set(df[df.space == "b"]["status"]) == {"pruned"} and set(
        df[df.space == "b"]["epochs_run"]
    ) == {1}
    assert set(df[df.space == "a"]["status"]) == {"completed"}
    study = _study(tmp_path / "asha")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]


def _tune_saw_running(root: Path, trial_id: str) -> bool:
    """Tune's newest saved experiment state lists the trial as RUNNING."""
    states = sorted(root.glob("experiment_state-*.json"))
    if not states:
        return False
    try:
        state = json.loads(states[-1].read_text())
    except ValueError:
        return False
    for trial_json, _meta in state["trial_data"]:
        t = json.loads(trial_json)
        if t["trial_id"] == trial_id and t["status"] == "RUNNING":
            return True
    return False


def test_resume_after_killed_driver(tmp_path: Path, ray_session: Any) -> None:
    """A subprocess sweep is SIGKILLed mid-trial, moved, then resumed here: finished trials
    kept, the interrupted one continued, ASHA rungs restored, no duplicate or missing rows."""
    spec = _spec(
        tmp_path, "res", spaces=[_lr_space("a", 1e-2), _lr_space("b", 1e-5)],
        objective={"metric": "lr", "mode": "max"}, base={"train.epochs": 3},
        data={"dataset": "phantom", "image_size": 64, "options": {"num_train": 384, "num_val": 16}},
        early_stopping={"scheduler": "asha", "grace_period": 1, "reduction_factor": 2},
        budget={"trials": 4}, concurrency=1,
    )  # fmt: skip
    root = tmp_path / "res"
    code = (
        "from lesionsweep.sweep.commands import run_sweep; "
        f"run_sweep({str(spec)!r}, progress=False, num_cpus=2)"
    )
    # Tune saves its experiment state every >= 10 s by default; the interrupted trial must be in
    # a saved state for this test (test_recovery covers a trial Tune never saw), so save often
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    killed_with: pd.DataFrame | None = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:  # the live tables: root files + per-trial fragments
                t = read_table(SweepLocation(str(root))).to_pandas()
                e = read_table(SweepLocation(str(root)), "epochs.parquet").to_pandas()
            except ConfigError:
                continue
            running = t[t.status == "running"]
            if (
                (t.status == "completed").sum() >= 1
                and (t.status == "pruned").sum() >= 1
                and len(running) == 1
                and (e.trial_id == running.trial_id.iloc[0]).sum() >= 1
                and _tune_saw_running(root, running.trial_id.iloc[0])
            ):
                os.kill(proc.pid, signal.SIGKILL)  # the driver only
                killed_with = t
                break
    finally:
        proc.wait(timeout=60)
        time.sleep(2)
        try:  # leftovers of the subprocess's own Ray cluster
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert killed_with is not None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    interrupted = killed_with[killed_with.status == "running"].trial_id.iloc[0]

    # resume from another place: the folder may move between the crash and the resume
    moved = tmp_path / "moved" / "res"
    moved.parent.mkdir()
    shutil.move(root, moved)
    root = moved
    summary = resume_sweep(root, progress=False)
    assert not summary.interrupted
    t = pd.read_parquet(root / "trials.parquet").sort_values("trial_id")
    e = pd.read_parquet(root / "epochs.parquet")
    assert len(t) == 4 and t.trial_id.is_unique
    assert set(killed_with.trial_id) <= set(t.trial_id)  # finished trials kept
    by_space = t.groupby("space")["status"].apply(set).to_dict()
    # the b trial started after the resume is pruned only because the rungs were restored
    assert by_space == {"a": {"completed"}, "b": {"pruned"}}
    assert not e.duplicated(["trial_id", "epoch"]).any()
    for _, row in t.iterrows():
        got = sorted(e[e.trial_id == row.trial_id].epoch)
        assert got == list(range(1, row.epochs_run + 1))
    assert t.set_index("trial_id").loc[interrupted, "epochs_run"] == 3
    assert all(r == f"runs/{tid}" for r, tid in zip(t.run_dir, t.trial_id, strict=True))
    log = (root / "runs" / interrupted / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2, 3]
