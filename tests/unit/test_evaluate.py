"""evaluate(): the only path to test splits; checkpoints; image preparation; overlays."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lesionsweep.config import config_from_dict
from lesionsweep.data import build_dataset
from lesionsweep.data.types import Sample, collate
from lesionsweep.errors import ConfigError, TrainingError
from lesionsweep.metrics import LocalizationSuite, RunOutputs
from lesionsweep.metrics.bootstrap import ImageContributions
from lesionsweep.training import (
    OverlayItem,
    TrainResult,
    evaluate,
    load_checkpoint,
    prepare_images,
    render_strip,
    resolve_checkpoint,
    run_training,
)
from lesionsweep.training.checkpoint import save_checkpoint
from lesionsweep.training.evaluate import evaluate_model

RAW: dict[str, Any] = {
    "method": {"name": "cam", "backbone": "test_resnet"},
    "data": {
        "dataset": "phantom",
        "image_size": 64,
        "options": {"num_train": 32, "num_val": 16, "num_test": 16},
    },
    "optim": {"name": "adam", "lr": 1e-3},
    # keep_resumable: these tests read both best.pt and the full last.pt
    "train": {"epochs": 2, "batch_size": 8, "seed": 1, "log_images": 0, "keep_resumable": True},
    "eval": {"batch_size": 8, "select_metric": "val/loss", "select_mode": "min"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return run_training(config_from_dict(RAW), tmp_path_factory.mktemp("run"))


def test_evaluate_test_loc_from_run_folder(run: TrainResult, tmp_path: Path) -> None:
    out_json = tmp_path / "eval" / "test-loc.json"
    m = evaluate(run.out_dir, "test-loc", out_path=out_json, device="cpu")
    assert m["epoch"] == run.best_epoch  # the best checkpoint by default
    for key in ("auroc_macro", "point_acc_micro", "point_acc_chance_micro", "maxboxacc_v2"):
        assert f"test-loc/{key}" in m
    assert "test-loc/loss" in m and math.isfinite(m["test-loc/loss"])
    assert all(k == "epoch" or k.startswith("test-loc/") for k in m)
    doc = json.loads(out_json.read_text())
    assert doc["split"] == "test-loc" and doc["epoch"] == run.best_epoch
    assert doc["checkpoint"].endswith("best.pt")
    assert doc["metrics"]["test-loc/loss"] == pytest.approx(m["test-loc/loss"])
    # the file itself gives the same numbers as the folder
    same = evaluate(run.out_dir / "checkpoints" / "best.pt", "test-loc", batch_size=5)
    assert same["test-loc/auroc_macro"] == pytest.approx(m["test-loc/auroc_macro"])
    assert same["test-loc/loss"] == pytest.approx(m["test-loc/loss"], rel=1e-5)


def test_evaluate_reproduces_the_last_validation(run: TrainResult) -> None:
    m = evaluate(run.out_dir, "val", which="last")
    final = run.final
    assert m["epoch"] == 2
    for key in ("auroc_macro", "point_acc_micro", "pxap", "maxboxacc_v2", "dice_pooled", "loss"):
        assert m[f"val/{key}"] == pytest.approx(final[f"val/{key}"], rel=1e-6, abs=1e-9), key


def test_evaluate_a_config_with_and_without_weights(run: TrainResult) -> None:
    cfg = config_from_dict(RAW)
    trained = evaluate(cfg, "val", checkpoint=run.out_dir / "checkpoints" / "last.pt")
    assert trained["val/loss"] == pytest.approx(run.final["val/loss"], rel=1e-6)
    fresh = evaluate(cfg, "val")  # seeded initial weights: a chance-level baseline
    assert fresh["epoch"] == 0
    assert fresh["val/loss"] != pytest.approx(trained["val/loss"])


def test_evaluate_overrides_apply_to_the_stored_config(run: TrainResult) -> None:
    m = evaluate(run.out_dir, "test-loc", overrides={"data.options.num_test": 4})
    full = evaluate(run.out_dir, "test-loc")
    assert m["test-loc/nih_num_boxes"] < full["test-loc/nih_num_boxes"]
    with pytest.raises(ConfigError, match=r"data\.options\.nope|unknown"):
        evaluate(run.out_dir, "test-loc", overrides={"data.nope": 1})


def test_resolve_checkpoint_errors(run: TrainResult, tmp_path: Path) -> None:
    assert resolve_checkpoint(run.out_dir).name == "best.pt"
    assert resolve_checkpoint(run.out_dir, "last").name == "last.pt"
    with pytest.raises(ConfigError, match="neither a run folder nor a checkpoint"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"neither checkpoints/best\.pt nor"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"which = 'worst'"):
        resolve_checkpoint(run.out_dir, "worst")


def test_evaluate_under_each_checkpoint_policy(tmp_path: Path) -> None:
    """Default policy: only a weights-only best.pt stays, and evaluate RUN uses it (also for
    which="last"); keep_checkpoint=last keeps a weights-only last.pt; none keeps nothing."""
    runs = {}
    for keep in ("best", "last", "none"):
        raw = {**RAW, "train": {**RAW["train"], "keep_resumable": False, "keep_checkpoint": keep}}
        if keep == "best":
            raw["train"].pop("keep_checkpoint")  # the default
        runs[keep] = run_training(config_from_dict(raw), tmp_path / keep)
    kept = {
        k: sorted(p.name for p in (r.out_dir / "checkpoints").iterdir()) for k, r in runs.items()
    }
    assert kept == {"best": ["best.pt"], "last": ["last.pt"], "none": []}
    best = runs["best"]
    state = load_checkpoint(best.out_dir / "checkpoints" / "best.pt")
    assert state["weights_only"] and "optimizer" not in state and "rng" not in state
    assert best.checkpoint_bytes == (best.out_dir / "checkpoints" / "best.pt").stat().st_size
    m = evaluate(best.out_dir, "val")
    assert m["epoch"] == best.best_epoch
    assert m["val/loss"] == pytest.approx(best.best["val/loss"], rel=1e-6)
    assert resolve_checkpoint(best.out_dir, "last").name == "best.pt"
    last = runs["last"]
    assert evaluate(last.out_dir, "val")["val/loss"] == pytest.approx(
        last.final["val/loss"], rel=1e-6
    )
    assert "optimizer" not in load_checkpoint(last.out_dir / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="keep_checkpoint = none keeps no weights"):
        evaluate(runs["none"].out_dir, "val")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_load_weights_only(run: TrainResult) -> None:
    state = torch.load(run.out_dir / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(state["model"], dict) and all(
        isinstance(v, torch.Tensor) for v in state["model"].values()
    )
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["config"]["method"]["name"] == "cam"


def test_load_checkpoint_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    # an arbitrary pickled object is refused by weights_only loading
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "obj": OverlayItem}, evil)
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"model": {}})
    with pytest.raises(TrainingError, match="not a lesionsweep checkpoint"):
        load_checkpoint(other)


# ----------------------------------------------------------------------------- image preparation


def test_prepare_images_normalises_on_device() -> None:
    x = torch.tensor([0, 255, 128, 64], dtype=torch.uint8).reshape(1, 1, 2, 2)
    y = prepare_images(x, torch.device("cpu"))
    assert y.dtype == torch.float32 and y.shape == (1, 1, 2, 2)
    expect = (x.float() / 255 - 0.5) / 0.25
    assert torch.allclose(y, expect, atol=1e-6)
    assert y.min() == pytest.approx(-2.0) and y.max() == pytest.approx(2.0)
    z = prepare_images(x.expand(2, 1, 2, 2), torch.device("cpu"), in_chans=3, channels_last=True)
    assert z.shape == (2, 3, 2, 2) and z.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(z[:, 0], z[:, 2]) and torch.allclose(z[0, 1], expect[0, 0], atol=1e-6)


# ----------------------------------------------------------------------------- overlays


def _item(target: list[float], boxes: list[list[float]]) -> OverlayItem:
    return OverlayItem(
        image=np.full((32, 32), 100, np.uint8),
        maps=np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4),
        probs=np.array([0.1, 0.9, 0.3], np.float32),
        target=np.array(target, np.float32),
        boxes=np.array(boxes, np.float32).reshape(-1, 5),
        id="x",
    )


def test_render_strip_panels_per_positive_class() -> None:
    names = ("a", "b", "c")
    two = render_strip(_item([1, 0, 1], [[0, 4, 4, 12, 12]]), names)
    assert two.dtype == np.uint8 and two.shape == (32, 3 * 32 + 2 * 2, 3)
    # the GT box outline is green on the plain image panel
    assert tuple(two[4, 8]) == (0, 255, 0) and tuple(two[11, 8]) == (0, 255, 0)
    assert tuple(two[20, 20]) == (100, 100, 100)  # the plain panel is gray elsewhere
    # the heatmap panel is coloured (not gray) away from the label text
    p = two[:, 34:66].astype(int)
    assert np.abs(p[28, 28, 0] - p[28, 28, 2]) > 20
    # a negative image shows its top-scoring class
    neg = render_strip(_item([0, 0, 0], []), names)
    assert neg.shape == (32, 2 * 32 + 2, 3)


def test_evaluate_model_keeps_positive_images_for_overlays() -> None:
    from lesionsweep.data.types import DatasetInfo
    from lesionsweep.methods import create_method
    from lesionsweep.metrics import LocalizationSuite

    info = DatasetInfo("t", ("a", "b"), has_boxes=True, has_masks=False, image_size=64)
    samples = []
    for i in range(6):
        pos = i in (3, 5)
        samples.append(
            Sample(
                image=torch.full((1, 64, 64), i * 10, dtype=torch.uint8),
                target=torch.tensor([1.0 if pos else 0.0, 0.0]),
                boxes=torch.tensor([[0, 8, 8, 24, 24]], dtype=torch.float32)
                if pos
                else torch.zeros((0, 5)),
                id=f"s{i}",
            )
        )
    loader = [collate(samples[:3]), collate(samples[3:])]
    torch.manual_seed(0)
    model = create_method("cam", 2, backbone="test_resnet")
    metrics, items = evaluate_model(
        model, loader, LocalizationSuite(info, 64), torch.device("cpu"), overlays=3
    )
    assert [it.id for it in items] == ["s3", "s5", "s0"]  # positives first, then the first others
    assert items[0].maps.shape == (2, 2, 2) and items[0].image.shape == (64, 64)
    assert "loss" in metrics and "point_acc_micro" in metrics
    assert model.training  # the train/eval mode is restored


def test_evaluate_saves_per_image_outputs_that_rescore_to_its_metrics(
    run: TrainResult, tmp_path: Path
) -> None:
    npz = tmp_path / "out.npz"
    m = evaluate(run.out_dir, "test-loc", device="cpu", which="last", outputs_path=npz)
    cfg = config_from_dict(RAW)
    ds = build_dataset(cfg.data, "test-loc")
    with np.load(npz) as z:
        assert z["logits"].shape == (16, ds.info.num_classes)
        assert z["maps"].shape[:2] == (16, ds.info.num_classes)
        assert z["ids"].tolist() == [ds[i].id for i in range(len(ds))]
        outs = RunOutputs(z["logits"], z["maps"], str(z["map_kind"]))
    suite = LocalizationSuite(ds.info, 64, cfg.eval.cam_curve_interval)
    again = ImageContributions(suite, [ds[i] for i in range(len(ds))], outs).compute(np.arange(16))
    for key in ("auroc_macro", "point_acc_macro", "iobb@0.5", "maxboxacc_v2", "pxap"):
        assert again[key] == pytest.approx(m[f"test-loc/{key}"], rel=1e-6, nan_ok=True)


def test_a_split_the_cache_lacks_is_read_from_the_source(tmp_path: Path) -> None:
    """A sweep's data cache holds only the splits its trials read: evaluating one of its runs on
    test-loc reads the original data, a split the cache has comes from the cache."""
    import dataclasses

    from lesionsweep.config import DataConfig
    from lesionsweep.data import CachedDataset, build_cache
    from lesionsweep.training.evaluate import evaluation_dataset

    data = DataConfig(dataset="phantom", image_size=64, options={"num_train": 8, "num_val": 4})
    cache = build_cache(data, tmp_path / "cache", splits=("train", "val"))
    cached = dataclasses.replace(data, cache=str(cache))
    assert isinstance(evaluation_dataset(cached, "val"), CachedDataset)
    test = evaluation_dataset(cached, "test-loc")
    assert not isinstance(test, CachedDataset) and len(test) > 0
    with pytest.raises(Exception, match="test-loc"):
        build_dataset(cached, "test-loc")  # what evaluate did before
