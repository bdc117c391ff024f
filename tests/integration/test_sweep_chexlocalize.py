"""A CheXpert sweep that selects on CheXlocalize's validation segmentations (objective
``val-loc/hit_rate``), then one evaluation of the best trial on ``test-loc``.

Data: the published-format fixture of ``tests/conftest.py`` (24 training films, CheXlocalize's
two JSON kinds for val and test), 64 px, ``test_resnet``, one epoch, two trials, local Ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from lesionsweep.sweep import backend
from lesionsweep.sweep.commands import run_sweep
from lesionsweep.training import evaluate

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_session() -> Any:
    import ray

    started = backend.init_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


def test_sweep_selects_on_val_loc_hit_rate(
    tmp_path: Path, chexlocalize_writer: Any, ray_session: Any
) -> None:
    data = tmp_path / "data"
    chexlocalize_writer(data, n_train=24)
    spec = {
        "name": "chexloc",
        "data": {
            "dataset": "chexpert",
            "root": str(data),
            "image_size": 64,
            "options": {"val_fraction": 0.3},
        },
        "base": {
            "method.name": "cam",
            "method.backbone": "test_resnet",
            "train.epochs": 1,
            "train.batch_size": 8,
            "train.log_images": 1,
            "train.device": "cpu",
            "eval.batch_size": 8,
        },
        "spaces": [
            {
                "name": "cam",
                "base": {"method.name": "cam"},
                "parameters": {"optim.lr": {"float": [1e-3, 1e-2], "log": True}},
            }
        ],
        "objective": {"metric": "val-loc/hit_rate", "mode": "max"},
        "budget": {"trials": 2},
        "concurrency": 2,
        "storage": str(tmp_path / "sweeps"),
    }
    path = tmp_path / "chexloc.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary = run_sweep(path, progress=False)
    assert summary.counts == {"completed": 2}, summary.format()
    root = tmp_path / "sweeps" / "chexloc"
    df = pd.read_parquet(root / "trials.parquet")
    for key in ("val-loc/hit_rate", "val-loc/miou", "val-loc/miou_full"):
        assert f"final.{key}" in df, sorted(c for c in df if "val-loc" in c)
    assert df["final.val-loc/hit_rate"].between(0.0, 1.0).all()
    # per-class values live in the epoch table; the fixture's val-loc segments Cardiomegaly and
    # Pleural Effusion (scored) but no Edema (NaN)
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert len(epochs) == 2 and epochs["val-loc/miou"].notna().all()
    assert epochs["val-loc/hit_rate/Cardiomegaly"].between(0.0, 1.0).all()
    assert epochs["val-loc/hit_rate/Edema"].isna().all()

    # the sealed test split: one evaluation of the best trial reports CheXlocalize's metrics
    best = df.loc[df["final.val-loc/hit_rate"].idxmax()]
    run = root / best["run_dir"]  # relative to the sweep root; its config reads the sweep's cache
    out = evaluate(run, "test-loc", device="cpu", out_path=tmp_path / "test.json")
    assert 0.0 <= out["test-loc/hit_rate"] <= 1.0
    assert not math.isnan(out["test-loc/hit_rate/Edema"])  # Edema is segmented in test
    assert math.isnan(out["test-loc/hit_rate/Cardiomegaly"])
    assert (tmp_path / "test.json").is_file()
