"""The shipped shortcut study: its trials run with the confounder on and report the shortcut
metrics every epoch (the keys reach Parquet / TensorBoard through the trainer's metrics)."""

from __future__ import annotations

import math
from pathlib import Path

from lesionsweep.sweep.spaces import RandomSuggester
from lesionsweep.sweep.spec import build_trial_config, load_spec
from lesionsweep.training import run_training


def test_shortcut_study_trial_reports_shortcut_metrics(tmp_path: Path) -> None:
    spec = load_spec(
        None,
        {
            "spaces": ["shortcut_study"],
            "data.image_size": 64,
            "data.options": {"num_train": 32, "num_val": 24},
            "base.method.backbone": "test_resnet",
            "base.train.epochs": 1,
            "base.train.log_images": 0,
            "early_stopping": "none",
        },
    )
    space = spec.spaces.by_name("shortcut_study")
    drawn = [space.sample(RandomSuggester(seed)) for seed in range(8)]
    assert {p["data.options.confounder_prob"] for p in drawn} > {0.9}  # searched
    params = next(p for p in drawn if p["method.name"] == "cam")
    cfg = build_trial_config(spec, "shortcut_study", params)
    assert cfg.data.options["confounder_class"] == "effusion"
    assert cfg.data.options["num_train"] == 32  # the spec's options and the space's constants
    result = run_training(cfg, tmp_path / "run")
    for key in ("val/shortcut_pointing", "val/shortcut_energy", "val/shortcut_area"):
        v = result.final[key]
        assert not math.isnan(v) and 0.0 <= v <= 1.0, (key, v)
    assert result.final["val/shortcut_area"] < 0.2  # the tube region is a small share
