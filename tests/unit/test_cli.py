"""The command line: commands run, and bad input exits non-zero with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lesionsweep.cli import main

TINY = """\
method: {name: cam, backbone: test_resnet, pooling: gmp}
data:
  dataset: phantom
  image_size: 64
  options: {num_train: 16, num_val: 8, num_test: 8}
train: {epochs: 1, batch_size: 8, log_images: 1}
eval: {cam_curve_interval: 0.1}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_train_then_evaluate_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "tiny.yaml", TINY)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_epoch"] == 1 and (run / "checkpoints" / "best.pt").is_file()
    metrics_file = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--split", "test-loc", "--out", str(metrics_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "test-loc/auroc_macro" in printed
    written = json.loads(metrics_file.read_text())
    assert written["split"] == "test-loc"
    assert written["metrics"]["test-loc/auroc_macro"] == printed["test-loc/auroc_macro"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("method: {name: cam, poolin: gap}\n", "method.poolin"),
        ("method: {name: nope}\n", "method.name = 'nope'"),
        ("train: {epochz: 1}\n", "train.epochz"),
        ("optim: {name: adagrad}\n", "optim.name = 'adagrad'"),
        ("method: [\n", "malformed YAML"),
        ("eval: {split: test}\n", "evaluate"),
    ],
)
def test_bad_configs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    cfg = _write(tmp_path / "bad.yaml", text)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lesionsweep: error:") and needle in err and "bad.yaml" in err
    assert len(err.splitlines()) <= 6  # one message (YAML errors quote the offending line)
    assert not (tmp_path / "run").exists()


def test_missing_config_and_missing_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = _write(tmp_path / "nih.yaml", f"data: {{dataset: nih, root: {tmp_path / 'nih'}}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert str(tmp_path / "nih") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cache_preview_and_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["cache", str(cache), "--image-size", "64", "--splits", "train,val"]
    args += ["--set", "data.options.num_train=4", "--set", "data.options.num_val=2"]
    assert main(args) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_items"] == 4
    assert (
        main(["preview", "--out", str(tmp_path / "p.png"), "--n", "2", "--image-size", "64"]) == 0
    )
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in ("cam", "pylon", "multiscale_cam", "minmax_entropy", "wsmis", "focal"):
        assert name in listed
