"""Exporting best configs from a sweep folder (no Ray): top-k, per method, Pareto."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from lesionsweep.config import config_from_flat, load_config
from lesionsweep.errors import ConfigError
from lesionsweep.sweep.export import SPEC_FILE, export_sweep, pareto_front, select_trials
from lesionsweep.sweep.results import TrialRecord
from lesionsweep.sweep.storage import SweepLocation
from lesionsweep.sweep.store import ResultsStore


def _cfg_json(method: str, lr: float) -> str:
    flat = {
        "method.name": method,
        "method.backbone": "test_resnet",
        "optim.lr": lr,
        "train.epochs": 2,
        "data.image_size": 256,  # a multiple of every method's input_multiple (PYLON: 256)
    }
    return json.dumps(config_from_flat(flat).to_dict())


def _sweep(tmp_path: Path, multi: bool = False) -> Path:
    root = tmp_path / "sw"
    loc = SweepLocation(str(root))
    obj = (
        {"metrics": ["val/a", "val/b"], "modes": ["max", "min"]}
        if multi
        else {"metrics": ["val/a"], "modes": ["max"]}
    )
    loc.write_bytes(SPEC_FILE, yaml.safe_dump({"name": "sw", "objective": obj}).encode())
    store = ResultsStore(loc, "sw", {"optim.lr": "float64"})
    rows = [  # trial, status, method, val/a, val/b
        ("t1", "completed", "cam", 0.80, 5.0),
        ("t2", "completed", "cam", 0.70, 1.0),
        ("t3", "completed", "pylon", 0.75, 3.0),
        ("t4", "pruned", "cam", 0.99, 0.1),  # partial training: never exported
        ("t5", "failed", "pylon", None, None),
        ("t6", "completed", "pylon", 0.60, 4.0),  # dominated by t3
        ("t7", "completed", "cam", float("nan"), 1.0),
    ]
    for i, (tid, status, method, a, b) in enumerate(rows):
        final = {} if a is None else {"val/a": a, "val/b": b}
        store.upsert_trial(
            TrialRecord(
                trial_id=tid,
                status=status,
                space="s",
                method=method,
                params={"optim.lr": 10.0 ** -(i + 1)},
                final=final,
                best=final,
                config_json=_cfg_json(method, 10.0 ** -(i + 1)),
            )
        )
    store.flush(force=True)
    return root


def test_top_k_writes_runnable_configs(tmp_path: Path) -> None:
    root = _sweep(tmp_path)
    out = export_sweep(root, top_k=2)
    assert [(e.trial_id, e.rank) for e in out] == [("t1", 1), ("t3", 2)]
    cfg = load_config(out[0].path)  # what `lesionsweep train` reads
    assert cfg.method.name == "cam" and cfg.optim.lr == pytest.approx(0.1)
    assert out[0].path.parent == root / "exports"
    single = export_sweep(root)
    assert single[0].path.name == "best.yaml" and load_config(single[0].path).optim.lr == 0.1
    rows = list(csv.reader((root / "exports" / "index.csv").open()))
    assert rows[0][:4] == ["group", "rank", "trial_id", "method"] and rows[1][2] == "t1"


def test_per_method(tmp_path: Path) -> None:
    out = export_sweep(_sweep(tmp_path), per_method=True, out_dir=tmp_path / "x")
    assert {(e.method, e.trial_id) for e in out} == {("cam", "t1"), ("pylon", "t3")}
    assert sorted(p.name for p in (tmp_path / "x").glob("*.yaml")) == [
        "best_cam.yaml",
        "best_pylon.yaml",
    ]


def test_pareto(tmp_path: Path) -> None:
    root = _sweep(tmp_path, multi=True)
    out = export_sweep(root, pareto=True)
    # max a, min b: t1 (0.8, 5), t3 (0.75, 3), t2 (0.7, 1) are non-dominated; t6 is dominated
    assert [e.trial_id for e in out] == ["t1", "t3", "t2"]
    assert all(e.path.name.startswith("pareto_") for e in out)
    with pytest.raises(ConfigError, match="needs a multi-objective sweep"):
        export_sweep(_sweep(tmp_path / "single"), pareto=True)


def test_selection_helpers() -> None:
    rows = [
        {"trial_id": "b", "status": "completed", "final.m": 1.0},
        {"trial_id": "a", "status": "completed", "final.m": 1.0},
        {"trial_id": "c", "status": "completed", "final.m": 0.5},
        {"trial_id": "d", "status": "pruned", "final.m": 9.0},
    ]
    assert [r["trial_id"] for r in select_trials(rows, "m", "max", 3)] == ["a", "b", "c"]
    assert [r["trial_id"] for r in select_trials(rows, "m", "min", 1)] == ["c"]
    pts = [
        {"trial_id": "p", "status": "completed", "final.x": 1.0, "final.y": 1.0},
        {"trial_id": "q", "status": "completed", "final.x": 1.0, "final.y": 1.0},  # tie: both kept
        {"trial_id": "r", "status": "completed", "final.x": 0.5, "final.y": 0.5},
    ]
    assert [r["trial_id"] for r in pareto_front(pts, ["x", "y"], ["max", "max"])] == ["p", "q"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is .* a sweep folder"):
        export_sweep(tmp_path / "nothing")
    root = _sweep(tmp_path)
    with pytest.raises(ConfigError, match="--top-k must be >= 1"):
        export_sweep(root, top_k=0)
    loc = SweepLocation(str(root))
    store = ResultsStore(loc, "sw", {}).load()
    for r in store.trials.values():
        r.status = "pruned"
    store.flush(force=True)
    with pytest.raises(ConfigError, match=r"no completed trial.*'pruned': 7"):
        export_sweep(root)
