"""``lesionsweep study`` end to end on the phantom (local Ray, num_cpus=2): sweep, retrain the
best config of each method with two seeds, evaluate each once on test-loc, the table with
bootstrap CIs; resume skips finished work, the ledger keeps the test split sealed, and the
report of the same sweep shows maps from the trials' checkpoints and the study table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from lesionsweep.errors import ConfigError
from lesionsweep.sweep.report.html import write_report
from lesionsweep.sweep.study import run_study

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _spec(tmp_path: Path) -> Path:
    lr = {"optim.lr": {"float": [1e-3, 1e-2], "log": True}}
    body: dict[str, Any] = {
        "name": "study",
        "data": {
            "dataset": "phantom",
            "image_size": 64,
            "options": {"num_train": 32, "num_val": 16, "num_test": 16},
        },
        "base": {
            "method.backbone": "test_resnet",
            "train.epochs": 2,
            "train.batch_size": 16,
            "train.log_images": 0,
            "train.device": "cpu",
            "eval.batch_size": 16,
        },
        "spaces": [
            {"name": "cam", "base": {"method.name": "cam"}, "parameters": lr},
            {"name": "msc", "base": {"method.name": "multiscale_cam"}, "parameters": lr},
        ],
        "objective": {"metric": "val/auroc_macro", "mode": "max"},
        "budget": {"trials": 2},
        "concurrency": 2,
        "storage": str(tmp_path),
    }
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def test_study_protocol_resume_and_sealed_test_split(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    kw: dict[str, Any] = {"seeds": 2, "top_k": 1, "num_cpus": 2, "progress": False, "n_boot": 20}
    res = run_study(spec, **kw)
    root = tmp_path / "study"
    table = pq.read_table(res.parquet).to_pylist()
    assert len(table) == 4 and res.evaluations == 4
    assert {r["method"] for r in table} == {"cam", "multiscale_cam"}
    assert {r["seed"] for r in table} == {1000, 1001}
    assert all(r["test-loc/auroc_macro"] is not None for r in table)
    assert any(k.startswith("test-loc/maxboxacc") for k in table[0])
    md = res.markdown.read_text()
    assert "Test evaluations made: **4**" in md
    assert md.count(" [") >= 2 * 5  # a CI next to each headline metric of both methods
    ledger = [json.loads(x) for x in (root / "study" / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 4 and all(e["split"] == "test-loc" for e in ledger)

    # resume: nothing retrained, nothing evaluated again
    done = sorted((root / "study" / "runs").glob("*/seed*/done.json"))
    stamps = [d.stat().st_mtime_ns for d in done]
    again = run_study(spec, **kw)
    assert again.evaluations == 4 and [d.stat().st_mtime_ns for d in done] == stamps
    assert pq.read_table(again.parquet).num_rows == 4

    # sealed: a recorded evaluation whose result is lost is not silently redone
    lost = root / "study" / "results" / f"{ledger[0]['key']}.json"
    os.remove(lost)
    with pytest.raises(ConfigError, match="already evaluated on test-loc.*--force"):
        run_study(spec, **kw)
    forced = run_study(spec, force=True, **kw)
    assert forced.evaluations == 8 and "Test evaluations made: **8**" in forced.table

    # the report of the same sweep: maps from the trials' checkpoints and the study table
    text = write_report(root).path.read_text()
    maps = text[text.index("<h2>Localization maps</h2>") :]
    assert maps.count('src="data:image/png;base64,') == 2 * 4  # 2 methods x 4 films
    assert "<h2>Study</h2>" in text
