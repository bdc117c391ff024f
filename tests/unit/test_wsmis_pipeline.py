"""The WSMIS pipeline end to end on a few phantom images (tiny sizes, test_resnet).

The slow test checks the method's claim on the phantom: the final segmentation Dice beats the
Dice of thresholded stage-1 CAMs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lesionsweep.config import config_from_dict
from lesionsweep.data import build_dataset
from lesionsweep.errors import ConfigError
from lesionsweep.methods.backbones import create_backbone
from lesionsweep.methods.wsmis import effective_radius
from lesionsweep.methods.wsmis.unet import UNet
from lesionsweep.training.trainer import EpochReport, run_training
from lesionsweep.training.wsmis import STAGE_KNOBS, WsmisRunner, reported_keys
from lesionsweep.training.wsmis.loading import IndexedLoader
from lesionsweep.training.wsmis.stage3 import stage3_optimizer


def _cfg(**method: object) -> object:
    return config_from_dict(
        {
            "method": {
                "name": "wsmis",
                "backbone": "test_resnet",
                "stage2_epochs": 1,
                "stage3_epochs": 1,
                "exp_times": 4,
                **method,
            },
            "data": {
                "dataset": "phantom",
                "image_size": 64,
                "classes": ["pneumothorax"],
                "options": {"num_train": 16, "num_val": 8, "prevalence": 0.5},
            },
            "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "amp": False},
            "eval": {"split": "val", "select_metric": "val/dice_pooled", "batch_size": 8},
        }
    )


def _scalars(run: Path) -> dict[str, list[int]]:
    """TensorBoard steps per scalar tag of a run folder (purged steps left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_pipeline_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg()
    reports: list[EpochReport] = []
    res = run_training(cfg, tmp_path, reporter=reports.append, resume=True)
    assert "[wsmis]" not in capsys.readouterr().err  # progress is off by default

    # one report per epoch of each stage, one increasing step series
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.metrics["stage"] for r in reports] == [1.0, 2.0, 3.0]
    assert all(r.metrics["epoch"] == r.epoch for r in reports)
    for key in ("stage1/auroc", "stage1/cam_dice", "stage1/cam_dice_oracle",
                "val/dice_pooled", "val/dice_per_image", "val/auroc_macro"):  # fmt: skip
        assert all(key in r.metrics for r in reports), key
    assert "stage2/pseudo_dice" in reports[1].metrics and "stage3/loss" in reports[2].metrics
    assert set(reports[2].metrics) == reported_keys(True)
    for r in reports:
        assert all(math.isfinite(v) for k, v in r.metrics.items() if k != "stage1/auroc")
        assert r.checkpoint_dir is not None and (r.checkpoint_dir / "model.pt").is_file()
    assert 0.0 <= reports[2].metrics["val/dice_pooled"] <= 1.0

    # stage outputs
    s1, s2, s3 = (tmp_path / f"stage{i}" for i in (1, 2, 3))
    for p in (s1 / "classifier.pt", s2 / "irnet.pt", s3 / "segmenter.pt", tmp_path / "config.yaml",
              tmp_path / "metrics.jsonl"):  # fmt: skip
        assert p.is_file(), p
    cams = np.load(s1 / "cams_train.npy")
    idx = np.load(s1 / "cams_train_index.npy")
    assert cams.dtype == np.float16 and cams.shape == (len(idx), 1, 8, 8)
    assert 0.0 <= float(cams.min()) and float(cams.max()) <= 1.0
    packed = np.load(s2 / "pseudo_masks_train.npy")
    masks = np.unpackbits(packed, axis=-1, count=64).astype(bool)
    assert masks.shape == (len(idx), 1, 64, 64)
    assert len(json.loads((s1 / "done.json").read_text())["history"]) == 1
    assert res.epochs_run == 3 and res.final["epoch"] == 3.0
    assert res.best_epoch in (1, 2, 3) and res.out_dir == tmp_path
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # atomic writes
    tb = _scalars(tmp_path)
    assert tb["stage1/loss"] == [1] and tb["stage2/loss"] == [2] and tb["stage3/loss"] == [3]
    assert tb["val/dice_pooled"] == [1, 2, 3]

    # resume: every stage is finished -> nothing re-runs, same result
    again: list[EpochReport] = []
    res2 = WsmisRunner.run_pipeline(cfg, tmp_path, again.append, True, progress=True)
    assert again == []
    assert res2.final == res.final and res2.epochs_run == 3
    assert "[wsmis] stage 3: finished" in capsys.readouterr().err

    # a bad knob fails before anything of the finished run is touched
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="ir_labels"):
        run_training(_cfg(ir_labels="fuzzy", stage3_epochs=2), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == before

    # a stage-3 knob re-runs only stage 3, which continues the step series after stage 2
    cfg3 = _cfg(stage3_epochs=2)
    again = []
    res3 = run_training(cfg3, tmp_path, reporter=again.append, resume=True)
    assert [r.epoch for r in again] == [3, 4] and all(r.metrics["stage"] == 3 for r in again)
    assert res3.epochs_run == 4
    assert np.array_equal(np.load(s1 / "cams_train.npy"), cams)  # stage 1 kept
    assert _scalars(tmp_path)["stage3/loss"] == [3, 4]  # the old step-3 event is purged

    # resume=False re-runs everything
    again = []
    run_training(cfg3, tmp_path, reporter=again.append, resume=False)
    assert [r.epoch for r in again] == [1, 2, 3, 4]


def test_evaluate_a_run_folder_on_val_and_test_loc(tmp_path: Path) -> None:
    from lesionsweep.training import evaluate

    res = run_training(_cfg(), tmp_path, resume=False)
    # val reproduces the pipeline's own final report (same models, same metric definitions)
    val = evaluate(tmp_path, "val", device="cpu")
    assert val["epoch"] == res.final["epoch"] == 3.0
    for key in ("val/dice_pooled", "val/dice_per_image", "val/auroc_macro"):
        assert val[key] == pytest.approx(res.final[key], rel=1e-6, abs=1e-9), key

    out_json = tmp_path / "eval" / "test-loc.json"
    m = evaluate(tmp_path, "test-loc", out_path=out_json, batch_size=4,
                 overrides={"data.options.num_test": 8})  # fmt: skip
    for key in ("dice_pooled", "dice_per_image"):
        assert 0.0 <= m[f"test-loc/{key}"] <= 1.0, key
    assert "test-loc/auroc_macro" in m and "test-loc/pxap" in m
    assert all(k == "epoch" or k.startswith("test-loc/") for k in m)
    doc = json.loads(out_json.read_text())
    assert doc["split"] == "test-loc" and doc["epoch"] == 3
    assert doc["metrics"]["test-loc/dice_pooled"] == pytest.approx(m["test-loc/dice_pooled"])

    with pytest.raises(ConfigError, match="which = 'worst'"):
        evaluate(tmp_path, "val", which="worst")
    # a changed knob whose re-run of stage 3 did not finish: the old U-Net is refused
    (tmp_path / "config.yaml").write_text(
        (tmp_path / "config.yaml").read_text().replace("stage3_epochs: 1", "stage3_epochs: 2")
    )
    with pytest.raises(ConfigError, match="another config"):
        evaluate(tmp_path, "val")
    (tmp_path / "stage3" / "segmenter.pt").unlink()
    with pytest.raises(ConfigError, match=r"no finished wsmis pipeline.*segmenter\.pt"):
        evaluate(tmp_path, "test-loc")


def test_bad_knobs_are_config_errors_and_leave_no_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="ir_labels"):
        run_training(_cfg(ir_labels="fuzzy"), run)
    assert not run.exists()
    with pytest.raises(ConfigError, match="conf_bg"):
        run_training(_cfg(conf_fg=0.1, conf_bg=0.2), run)
    assert not run.exists()
    cfg = _cfg()
    bad = cfg.replace(eval=dataclasses.replace(cfg.eval, select_metric="val/dise_pooled"))
    with pytest.raises(ConfigError, match=r"'val/dise_pooled' is not a reported.*val/dice_pooled"):
        run_training(bad, run)
    assert not run.exists()
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(not_a_knob=1)


def test_a_rerun_stage_forgets_later_stages_before_it_runs(tmp_path: Path) -> None:
    cfg = _cfg()
    run_training(cfg, tmp_path)
    done = [tmp_path / f"stage{i}" / "done.json" for i in (1, 2, 3)]
    assert all(p.is_file() for p in done)

    class Crash(Exception):
        pass

    def crash_in_stage2(report: EpochReport) -> None:
        if report.metrics["stage"] == 2:  # its pseudo masks are already rewritten
            raise Crash

    # a stage-2 knob re-runs stages 2 and 3; the run dies inside stage 2
    with pytest.raises(Crash):
        run_training(_cfg(beta=5.0), tmp_path, reporter=crash_in_stage2)
    assert done[0].is_file() and not done[1].exists() and not done[2].exists()

    # resuming with the old config cannot reuse stage 2/3 over the new pseudo masks
    reports: list[EpochReport] = []
    run_training(cfg, tmp_path, reporter=reports.append)
    assert [r.metrics["stage"] for r in reports] == [2.0, 3.0]
    assert all(p.is_file() for p in done)


def test_indexed_loader_yields_the_dataset_indices_of_each_batch() -> None:

    ds = build_dataset(_cfg().data, "train")
    want = np.arange(1, len(ds), 2)
    gen = torch.Generator().manual_seed(0)
    loader = IndexedLoader(
        ds, want, batch_size=3, num_workers=0, device=torch.device("cpu"), shuffle=True,
        generator=gen, drop_last=False,
    )  # fmt: skip
    seen = []
    for idx, batch in loader:
        assert batch.ids == [ds[int(j)].id for j in idx] and batch.masks is None
        seen.append(idx)
    order = np.concatenate(seen)
    assert len(seen) == len(loader) == 3 and sorted(order) == list(want)
    assert not np.array_equal(order, want)  # shuffled (seed 0)
    again = np.concatenate([i for i, _ in loader])
    assert not np.array_equal(again, order)  # a new order each pass
    _, batch = next(iter(IndexedLoader(ds, want, batch_size=3, num_workers=0,
                                        device=torch.device("cpu"), masks=True)))  # fmt: skip
    assert batch.masks is not None and batch.masks.shape == (3, 1, 64, 64)


def test_stage3_optimizer_splits_the_platform_groups(tmp_path: Path) -> None:

    cfg = _cfg(stage3_lr=1e-3)
    cfg = cfg.replace(
        optim=dataclasses.replace(cfg.optim, name="sgd", momentum=0.8, weight_decay=1e-4)
    )
    pipe = WsmisRunner(cfg, tmp_path, None)
    pipe.s = {"stage3_lr": 1e-3}
    net = UNet(create_backbone("test_resnet", 1, False), 1)
    opt = stage3_optimizer(pipe, net)
    assert isinstance(opt, torch.optim.SGD)
    enc = {id(p) for p in net.encoder.parameters()}
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # each exactly once
    for g in opt.param_groups:
        in_enc = {id(p) in enc for p in g["params"]}
        assert len(in_enc) == 1
        assert g["lr"] == pytest.approx(1e-4 if in_enc.pop() else 1e-3)
        assert g["momentum"] == 0.8
        assert g["weight_decay"] == (1e-4 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    assert not list(tmp_path.iterdir())  # building the pipeline writes nothing


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_phantom_final_dice_beats_thresholded_cams(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "method": {
                "name": "wsmis",
                "backbone": "test_resnet",
                "stage2_epochs": 10,
                "stage3_epochs": 8,
            },
            "data": {
                "dataset": "phantom",
                "image_size": 96,
                "classes": ["pneumothorax"],
                "options": {"num_train": 256, "num_val": 64, "prevalence": 0.5},
            },
            "train": {"epochs": 8, "batch_size": 16, "device": "cpu", "amp": False},
            "optim": {"lr": 1e-3, "schedule": "cosine"},
            "eval": {"split": "val", "select_metric": "val/dice_pooled", "batch_size": 64},
        }
    )
    res = run_training(cfg, tmp_path, resume=False)
    cam = res.final["stage1/cam_dice"]
    final = res.final["val/dice_pooled"]
    oracle = res.final["stage1/cam_dice_oracle"]
    pseudo = res.final["stage2/pseudo_dice"]
    print(
        f"phantom: CAM Dice {cam:.4f} (oracle {oracle:.4f}), pseudo {pseudo:.4f}, final {final:.4f}"
    )
    assert final > cam


def test_every_knob_belongs_to_exactly_one_stage() -> None:
    # a knob outside the stage fingerprints would not re-run its stage on resume
    from lesionsweep.methods import method_params

    owners = [k for knobs in STAGE_KNOBS.values() for k in knobs]
    assert len(owners) == len(set(owners))
    assert set(owners) == set(method_params("wsmis"))


def test_effective_radius_scales_with_the_grid() -> None:
    assert effective_radius(10, (128, 128)) == 10 and effective_radius(5, (128, 128)) == 5
    assert effective_radius(10, (32, 32)) == 3 and effective_radius(5, (32, 32)) == 2
    assert effective_radius(5, (16, 24)) == 2  # never below 2, shortest side counts


def test_dice_metric_without_masks_is_refused_early(tmp_path: Path) -> None:
    cfg = _cfg()
    train = build_dataset(cfg.data, "train")
    val = build_dataset(cfg.data, "val")
    with pytest.raises(ConfigError, match="needs masks"):
        WsmisRunner.run_pipeline(cfg, tmp_path, None, False, datasets=(train, val, None))
