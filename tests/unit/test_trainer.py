"""The single-run training loop on the phantom: files, determinism, resume, failures, schedules,
DDP (2 real gloo processes), and a slow per-method "learns to localize" check."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lesionsweep.config import (
    EvalConfig,
    MethodConfig,
    OptimConfig,
    RunConfig,
    config_from_dict,
    load_config,
)
from lesionsweep.errors import ConfigError, DataError, TrainingError
from lesionsweep.methods import Method, MethodOutput, method_class, method_names, method_params
from lesionsweep.methods import base as methods_base
from lesionsweep.training import (
    EpochReport,
    LRSchedule,
    TrainResult,
    load_checkpoint,
    run_training,
    runners,
)
from torch import nn

TIMING = ("train/images_per_s", "time/epoch_s")


def tiny(**sections: dict[str, Any]) -> RunConfig:
    """A config that trains in about a second: phantom 64 px, 32 + 16 images, test_resnet."""
    raw: dict[str, Any] = {
        "method": {"name": "cam", "backbone": "test_resnet"},
        "data": {
            "dataset": "phantom",
            "image_size": 64,
            "options": {"num_train": 32, "num_val": 16},
        },
        "optim": {"name": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 8, "seed": 3, "log_images": 2},
        "eval": {"batch_size": 8, "select_metric": "val/point_acc_micro"},
    }
    for sec, body in sections.items():
        same_method = sec == "method" and body.get("name", "cam") == "cam"
        raw[sec] = {**raw.get(sec, {}), **body} if sec != "method" or same_method else body
    return config_from_dict(raw, source="<test>")


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def same(a: list[dict[str, float]], b: list[dict[str, float]]) -> bool:
    """Equal histories, NaN == NaN."""
    a, b = untimed(a), untimed(b)
    if [sorted(h) for h in a] != [sorted(h) for h in b]:
        return False
    return all(
        (math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k]
        for x, y in zip(a, b, strict=True)
        for k in x
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, list[EpochReport]]:
    reports: list[EpochReport] = []
    out = tmp_path_factory.mktemp("baseline")
    result = run_training(tiny(), out, reporter=reports.append)
    return result, reports


@pytest.fixture
def register() -> Iterator[Any]:
    """Register test-only methods for one test and remove them afterwards."""
    added: list[str] = []

    def reg(name: str, cls: type[Method]) -> None:
        methods_base.register_method(name)(cls)
        added.append(name)

    yield reg
    for n in added:
        methods_base._REGISTRY.pop(n, None)


class _NanAt(Method):
    """A tiny method whose training loss is NaN at its ``nan_at``-th training step."""

    map_kind = "logits"

    def __init__(
        self,
        num_classes: int,
        criterion: nn.Module | None = None,
        nan_at: int = 3,
        in_chans: int = 1,
    ) -> None:
        super().__init__(num_classes, criterion)
        self.conv = nn.Conv2d(in_chans, num_classes, 3, stride=8, padding=1)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> MethodOutput:
        maps = self.conv(x)
        return MethodOutput(logits=maps.mean((2, 3)), maps=maps)

    def loss(self, output: MethodOutput, targets: torch.Tensor, target_mask: Any = None) -> Any:
        loss = super().loss(output, targets, target_mask)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at:
                return loss * float("nan")
        return loss


# ----------------------------------------------------------------------------- a run's files


def test_run_writes_config_checkpoints_tensorboard_metrics(
    baseline: tuple[TrainResult, list[EpochReport]],
) -> None:
    result, reports = baseline
    out = result.out_dir
    cfg = tiny()
    assert load_config(out / "config.yaml") == cfg

    # reporter: once per epoch, flat metrics, checkpoint folder on rank 0
    assert [r.epoch for r in reports] == [1, 2]
    assert reports[0].is_best  # the first epoch is always the best so far
    assert all(r.checkpoint_dir == out / "checkpoints" for r in reports)
    m = reports[-1].metrics
    for key in ("epoch", "train/loss", "train/images_per_s", "time/epoch_s", "lr", "val/loss"):
        assert key in m and isinstance(m[key], float), key
    for key in ("val/auroc_macro", "val/point_acc_micro", "val/maxboxacc_v2", "val/pxap"):
        assert key in m
    # the phantom's val has boxes and masks: eval.loc_split = "auto" adds no split
    assert cfg.eval.loc_split == "auto" and not any(k.startswith("val-loc/") for k in m)
    assert m["train/images_per_s"] > 0 and math.isfinite(m["train/loss"])

    # result
    assert result.epochs_run == 2 and len(result.history) == 2
    assert result.final == result.history[-1] == m
    best = max(
        result.history,
        key=lambda h: (
            -math.inf if math.isnan(h["val/point_acc_micro"]) else h["val/point_acc_micro"]
        ),
    )
    assert result.best_epoch == int(best["epoch"]) and result.best == best

    # checkpoints (default policy keep_checkpoint=best): the resumable last.pt was removed when
    # the run ended; best.pt is weights-only, loads with weights_only=True, plain contents
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt"]
    best_ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best_ckpt["epoch"] == result.best_epoch
    assert len(best_ckpt["history"]) == result.best_epoch  # written at the best epoch
    assert set(best_ckpt) == {
        "format",
        "epoch",
        "model",
        "history",
        "best",
        "config",
        "weights_only",
    }
    assert config_from_dict(best_ckpt["config"]) == cfg
    assert result.checkpoint_bytes == (out / "checkpoints" / "best.pt").stat().st_size

    # metrics.jsonl: one strict-JSON line per epoch, same values as the history
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[1]["val/loss"] == pytest.approx(result.final["val/loss"])

    # tensorboard: a scalar for every metric, one overlay image per logged validation image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert set(tags["scalars"]) == set(m) - {"epoch"}
    assert [e.step for e in ea.Scalars("val/auroc_macro")] == [1, 2]
    assert len(tags["images"]) == cfg.train.log_images
    img = ea.Images(tags["images"][0])[-1]
    assert img.height == 64 and img.width > 2 * 64  # image panel + at least one map panel


def test_same_config_same_metrics(
    baseline: tuple[TrainResult, list[EpochReport]], tmp_path: Path
) -> None:
    again = run_training(tiny(), tmp_path / "again")
    assert same(again.history, baseline[0].history)
    a = load_checkpoint(tmp_path / "again" / "checkpoints" / "best.pt")["model"]
    b = load_checkpoint(baseline[0].out_dir / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = run_training(tiny(train={"seed": 4}), tmp_path / "other")
    assert not same(other.history, baseline[0].history)  # the seed matters


def test_resume_equals_uninterrupted(
    baseline: tuple[TrainResult, list[EpochReport]], tmp_path: Path
) -> None:
    class Crash(Exception):
        pass

    def crash_after_first(rep: EpochReport) -> None:
        if rep.epoch == 1:
            raise Crash

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_training(tiny(), out, reporter=crash_after_first)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    seen: list[int] = []
    result = run_training(tiny(), out, reporter=lambda r: seen.append(r.epoch))
    assert seen == [2]  # only the remaining epoch ran
    assert result.epochs_run == 2
    assert same(result.history, baseline[0].history)
    a = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    b = load_checkpoint(baseline[0].out_dir / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (out / "checkpoints" / "last.pt").exists()  # removed once the run ended

    # a finished run resumes to a no-op with the same result (from metrics.jsonl)
    done = run_training(tiny(), out, reporter=lambda r: seen.append(r.epoch))
    assert seen == [2] and same(done.history, result.history)
    assert (done.best_epoch, done.epochs_run) == (result.best_epoch, 2)

    # resume=False starts over
    fresh = run_training(tiny(), out, resume=False, reporter=lambda r: seen.append(r.epoch))
    assert seen == [2, 1, 2] and same(fresh.history, baseline[0].history)


def test_resume_with_a_different_config_is_refused(
    baseline: tuple[TrainResult, list[EpochReport]], tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(baseline[0].out_dir, out)
    with pytest.raises(ConfigError, match=r"optim\.lr \(0\.001 -> 0\.01\)") as e:
        run_training(tiny(optim={"lr": 1e-2}), out)
    assert "config.yaml" in str(e.value)  # the finished run's resumable state is gone
    # more epochs need the resumable state, which the default policy removed at the end
    with pytest.raises(TrainingError, match="keep_resumable"):
        run_training(tiny(train={"epochs": 3}), out)
    # kept with keep_resumable: more epochs is a legal continuation
    kept = tmp_path / "kept"
    run_training(tiny(train={"keep_resumable": True}), kept)
    with pytest.raises(ConfigError, match=r"optim\.lr") as e:
        run_training(tiny(optim={"lr": 1e-2}), kept)
    assert "last.pt" in str(e.value)
    more = run_training(tiny(train={"epochs": 3}), kept)
    assert more.epochs_run == 3 and [int(h["epoch"]) for h in more.history] == [1, 2, 3]


# ----------------------------------------------------------------------------- failures


def test_nan_loss_stops_with_training_error(register: Any, tmp_path: Path) -> None:
    register("_test_nan_at", _NanAt)
    cfg = tiny(method={"name": "_test_nan_at", "nan_at": 3})
    with pytest.raises(TrainingError, match=r"non-finite training loss nan at epoch 1, step 3"):
        run_training(cfg, tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoints" / "best.pt").exists()
    assert not (tmp_path / "a" / "checkpoints" / "last.pt").exists()

    # NaN in epoch 2: the checkpoints of epoch 1 stay, nothing from the bad state is written
    cfg = tiny(method={"name": "_test_nan_at", "nan_at": 6})
    with pytest.raises(TrainingError, match=r"epoch 2, step 2"):
        run_training(cfg, tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["epoch"] == 1


def test_huge_lr_diverges_into_training_error(tmp_path: Path) -> None:
    cfg = tiny(optim={"name": "sgd", "lr": 1e30, "schedule": "none", "warmup_epochs": 0})
    with pytest.raises(TrainingError, match=r"non-finite"):
        run_training(cfg, tmp_path)


def test_test_split_is_refused(tmp_path: Path) -> None:
    for split in ("test", "test-loc"):
        cfg = RunConfig(eval=EvalConfig(split=split))  # bypasses the YAML loader's own check
        with pytest.raises(ConfigError, match=rf"eval\.split = '{split}'.*evaluate"):
            run_training(cfg, tmp_path)
    assert not (tmp_path / "config.yaml").exists()


def test_build_errors_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    base = tiny()
    bad = base.replace(method=MethodConfig("cam", {"backbone": "test_resnet", "poolingg": "x"}))
    with pytest.raises(ConfigError, match=r"method\.poolingg.*allowed:.*pooling"):
        run_training(bad, tmp_path)
    bad = base.replace(method=MethodConfig("cam", {"backbone": "test_resnet", "pooling": "avg"}))
    with pytest.raises(ConfigError, match=r"method\.pooling='avg'"):
        run_training(bad, tmp_path)
    bad = base.replace(method=MethodConfig("no_such_method", {}))
    with pytest.raises(ConfigError, match=r"method\.name = 'no_such_method'"):
        run_training(bad, tmp_path)
    if "pylon" in method_names():
        bad = base.replace(method=MethodConfig("pylon", {"backbone": "test_resnet"}))
        with pytest.raises(ConfigError, match=r"data\.image_size = 64 must be a multiple of 256"):
            run_training(bad, tmp_path)
    with pytest.raises(ConfigError, match=r"eval\.select_metric = 'val/nope'.*val/auroc_macro"):
        run_training(tiny(eval={"select_metric": "val/nope"}, train={"epochs": 1}), tmp_path)
    # none of these failures leaves a half-written run folder behind
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_leaves_no_run_folder(tmp_path: Path) -> None:
    from lesionsweep.config import DataConfig
    from lesionsweep.errors import DataError

    bad = tiny().replace(data=DataConfig(dataset="nih", root=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="nope"):
        run_training(bad, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_staged_methods_are_run_by_their_runner(register: Any, tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    class _Runner:
        @classmethod
        def run_pipeline(
            cls,
            cfg: RunConfig,
            out_dir: Path,
            reporter: Any = None,
            resume: bool = True,
            *,
            datasets: Any = None,
            progress: bool = False,
        ) -> Any:
            calls.append((cfg.method.name, out_dir, reporter, resume))
            return "delegated"

        @staticmethod
        def evaluate_run(run_dir: Any, cfg: RunConfig, split: str, **kw: Any) -> dict[str, float]:
            return {f"{split}/x": 1.0}

    class _Staged(_NanAt):
        runner = "_test_runner"

    runners.register_runner("_test_runner", _Runner)
    register("_test_staged", _Staged)
    cfg = tiny(method={"name": "_test_staged"})
    try:
        assert run_training(cfg, tmp_path, reporter=print, resume=False) == "delegated"
    finally:
        runners._RUNNERS.pop("_test_runner", None)
    assert calls == [("_test_staged", tmp_path, print, False)]
    assert not (tmp_path / "config.yaml").exists()


def test_a_method_naming_an_unknown_runner_is_a_config_error(register: Any, tmp_path: Path) -> None:
    class _Orphan(_NanAt):
        runner = "_no_such_runner"

    register("_test_orphan", _Orphan)
    with pytest.raises(ConfigError, match="_no_such_runner"):
        run_training(tiny(method={"name": "_test_orphan"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_three_channel_input_and_step_schedule(tmp_path: Path) -> None:
    cfg = tiny(
        train={"in_chans": 3, "epochs": 2, "log_images": 0},
        optim={"schedule": "step", "step_size": 1, "gamma": 0.5, "warmup_epochs": 0},
    )
    result = run_training(cfg, tmp_path)
    assert [h["lr"] for h in result.history] == pytest.approx([1e-3, 5e-4])
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    stem = [v for k, v in state["model"].items() if v.ndim == 4][0]
    assert stem.shape[1] == 3  # the backbone was built for 3 channels
    assert not list((tmp_path / "tensorboard").glob("*")) == []


# ----------------------------------------------------------------------------- localization split


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NIH-format folder of 60 generated 64-px films: about 27 train, 18 val (image labels
    only) and 4 val-loc (boxes) images with the options of :func:`nih`."""
    from lesionsweep.data.standin import make_nih_root

    root = tmp_path_factory.mktemp("nih")
    make_nih_root(root, num_images=60, image_px=64, box_fraction=0.5, seed=1)
    return root


def nih(root: Path, **eval_: Any) -> RunConfig:
    return tiny(
        data={
            "dataset": "nih",
            "root": str(root),
            "image_size": 64,
            "options": {"val_fraction": 0.25, "val_loc_per_class": 1},
        },
        train={"epochs": 1, "log_images": 2},
        eval={"select_metric": "val-loc/point_acc_micro", **eval_},
    )


def test_nih_reports_val_auroc_and_val_loc_localization(nih_root: Path, tmp_path: Path) -> None:
    from lesionsweep.data import build_dataset

    cfg = nih(nih_root)
    assert cfg.eval.loc_split == "auto"
    loc_ids = {str(i) for i in build_dataset(cfg.data, "val-loc").ids}  # type: ignore[attr-defined]
    assert 0 < len(loc_ids) < 10
    reports: list[EpochReport] = []
    result = run_training(cfg, tmp_path, reporter=reports.append)
    m = reports[-1].metrics
    # val: image labels only -> AUROC, no localization keys; val-loc: boxes -> box metrics
    assert math.isfinite(m["val/auroc_macro"]) and math.isfinite(m["val/loss"])
    assert not any(k.startswith("val/point_acc") or k.startswith("val/maxbox") for k in m)
    for key in ("val-loc/point_acc_micro", "val-loc/maxboxacc_v2", "val-loc/loss"):
        assert key in m and math.isfinite(m[key]), key
    assert 0.0 <= m["val-loc/point_acc_micro"] <= 1.0
    assert "val-loc/pxap" not in m  # NIH has boxes, no masks
    assert result.best_epoch == 1 and result.final == m
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "val-loc/point_acc_micro" in rows[0] and "val/auroc_macro" in rows[0]

    # tensorboard: the new scalars, overlays from val-loc (val has no boxes to draw)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    tags = ea.Tags()
    assert set(tags["scalars"]) == set(m) - {"epoch"}
    assert len(tags["images"]) == 2
    assert {t.split("_", 1)[1] for t in tags["images"]} <= loc_ids  # maps/<slot>_<id>


def test_loc_split_off_explicit_and_refused(nih_root: Path, tmp_path: Path) -> None:
    from lesionsweep.data import build_dataset
    from lesionsweep.training import Trainer

    # off: val only, and a val-loc selection metric is then not a reported metric
    with pytest.raises(ConfigError, match=r"'val-loc/point_acc_micro' is not a reported.*auroc"):
        run_training(nih(nih_root, loc_split="none"), tmp_path / "off")
    assert not (tmp_path / "off").exists()
    off = run_training(
        nih(nih_root, loc_split=None, select_metric="val/auroc_macro"), tmp_path / "off"
    )
    assert not any(k.startswith("val-loc/") for k in off.final)

    # injected datasets: a third one is the localization split
    cfg = nih(nih_root)
    train, val, loc = (build_dataset(cfg.data, s) for s in ("train", "val", "val-loc"))
    res = Trainer(cfg, tmp_path / "inj", datasets=(train, val, loc)).fit(resume=False)
    assert "val-loc/point_acc_micro" in res.final and "val/auroc_macro" in res.final

    # test splits and eval.split itself are refused, also in configs that skip the YAML checks
    base = nih(nih_root)
    for bad, pattern in [
        ("test-loc", r"eval\.loc_split = 'test-loc'.*evaluate"),
        ("val", r"eval\.loc_split = 'val' is not allowed"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            run_training(base.replace(eval=EvalConfig(loc_split=bad)), tmp_path / "bad")
    same_split = EvalConfig(split="val-loc", loc_split="val-loc")
    with pytest.raises(ConfigError, match=r"is eval\.split itself"):
        run_training(base.replace(eval=same_split), tmp_path / "bad")

    # "auto" on a root without the box file: the error says how to train without val-loc
    import shutil

    no_boxes = tmp_path / "no_boxes"
    shutil.copytree(nih_root, no_boxes)
    (no_boxes / "BBox_List_2017.csv").unlink()
    with pytest.raises(DataError, match=r"BBox_List.*eval\.loc_split: none"):
        run_training(nih(no_boxes), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- schedules


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched: LRSchedule, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.lr)
        sched.step()
    return out


def test_cosine_with_warmup() -> None:
    s = LRSchedule(_opt(), OptimConfig(schedule="cosine", warmup_epochs=1), 3, 4)
    lrs = _lrs(s, 12)
    assert lrs[:4] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5])  # linear warm-up
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[11] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(
        a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False)
    )  # monotone decay after warm-up


def test_step_none_and_plateau() -> None:
    s = LRSchedule(_opt(0.1), OptimConfig(schedule="step", step_size=2, gamma=0.5), 6, 3)
    assert _lrs(s, 18)[::3] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    s = LRSchedule(_opt(0.1), OptimConfig(schedule="none"), 2, 3)
    assert _lrs(s, 6) == pytest.approx([0.1] * 6)
    s = LRSchedule(_opt(1.0), OptimConfig(schedule="plateau", patience=1, factor=0.5), 9, 1)
    lrs = []
    for loss in [1.0, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4]:
        s.step()
        s.end_epoch(loss)
        lrs.append(s.lr)
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25])
    s.end_epoch(float("nan"))  # ignored
    assert s.lr == pytest.approx(0.25)


def test_schedule_state_roundtrip() -> None:
    cfg = OptimConfig(schedule="plateau", patience=0, factor=0.1, warmup_epochs=1)
    a = LRSchedule(_opt(), cfg, 4, 2)
    for loss in (1.0, 2.0):
        a.step()
        a.step()
        a.end_epoch(loss)
    b = LRSchedule(_opt(), cfg, 4, 2)
    b.load_state_dict(a.state_dict())
    assert b.lr == a.lr == pytest.approx(0.1)
    assert _lrs(a, 3) == _lrs(b, 3)


def test_bad_schedule_values() -> None:
    with pytest.raises(ConfigError, match=r"optim\.schedule = 'linear'"):
        LRSchedule(_opt(), OptimConfig(schedule="linear"), 1, 1)
    with pytest.raises(ConfigError, match=r"optim\.step_size must be >= 1"):
        LRSchedule(_opt(), OptimConfig(schedule="step", step_size=0), 1, 1)


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, raw: dict[str, Any]) -> None:
    """One DDP rank (forked from the test process, so nothing is imported again)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reports: list[dict[str, Any]] = []

        def report(r: EpochReport) -> None:
            ckpt = None if r.checkpoint_dir is None else str(r.checkpoint_dir)
            reports.append(
                {"epoch": r.epoch, "metrics": r.metrics, "is_best": r.is_best, "ckpt": ckpt}
            )

        res = run_training(config_from_dict(raw), out_dir, reporter=report)
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps({"reports": reports, "epochs_run": res.epochs_run})
        )
    finally:
        dist.destroy_process_group()


def _ddp_failing_worker(rank: int, world: int, init_file: str, out_dir: str, raw: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        run_training(config_from_dict(raw), out_dir)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        Path(out_dir, f"rank{rank}.err").write_text(f"{type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def test_ddp_rank0_setup_failure_reaches_every_rank(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    cfg = tiny(train={"device": "cpu"}, eval={"select_metric": "val/nope"})
    mp.start_processes(
        _ddp_failing_worker,
        args=(2, str(tmp_path / "pg"), str(tmp_path), cfg.to_dict()),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    err0 = (tmp_path / "rank0.err").read_text()
    err1 = (tmp_path / "rank1.err").read_text()
    assert err0.startswith("ConfigError: eval.select_metric = 'val/nope'")
    assert err1.startswith("TrainingError: rank 0 failed during setup: ConfigError")


def test_ddp_two_gloo_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    cfg = tiny(train={"epochs": 2, "device": "cpu", "keep_resumable": True})
    out = tmp_path / "run"
    out.mkdir()
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "pg"), str(out), cfg.to_dict()),
        nprocs=2,
        join=True,
        start_method="fork",  # spawn would re-import torch/timm in each child (slow on 2 cores)
    )
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    # every rank reported every epoch, with rank 0's metrics; only rank 0 got the checkpoint
    assert [r["epoch"] for r in r0["reports"]] == [1, 2] == [r["epoch"] for r in r1["reports"]]
    assert [r["metrics"] for r in r0["reports"]] == [r["metrics"] for r in r1["reports"]]
    assert [r["is_best"] for r in r0["reports"]] == [r["is_best"] for r in r1["reports"]]
    assert all(r["ckpt"] == str(out / "checkpoints") for r in r0["reports"])
    assert all(r["ckpt"] is None for r in r1["reports"])
    assert r0["epochs_run"] == r1["epochs_run"] == 2
    # files from rank 0 only: one event file; each rank trained on half the data per epoch
    assert len(list((out / "tensorboard").glob("events.*"))) == 1
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 2
    assert last["schedule"]["step_count"] == 2 * 2  # 32 images / (2 ranks x 8) per epoch
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["device"] == "cpu"
    assert r0["reports"][-1]["metrics"]["train/images_per_s"] > 0


# ----------------------------------------------------------------------------- learning (slow)

# One setting for every registered method (adding a method needs no edit here): the method's
# defaults plus what it declares for small images (`Method.small_scale_kwargs`), the smallest
# image side >= 128 that is a multiple of its `input_multiple`, an easy phantom (high lesion
# contrast, half the images positive per class), 5 Adam epochs at batch 8 (min-max entropy and
# PYLON were still rising after 48 steps). The bar is best val point_acc_micro >
# max(2 x chance, chance + 0.1), i.e. chance + 0.1 here (chance ~0.09). The phantom's bytes
# change with numpy/OpenCV versions much as they change with its seed, so margins are measured
# over phantom seeds (acc - bar, 1 torch thread). At 5 epochs min-max entropy's was +0.04 on seed
# 0 (+0.12..+0.15 on others); at 8 epochs: +0.15, +0.19, +0.24, +0.12 on seeds 0..3. cam, multi-
# scale CAM and PYLON had +0.11..+0.25 already at 5 epochs (cam +0.25 on seed 1).
LEARN_OPTIONS = {"num_train": 256, "num_val": 128, "difficulty": 0.0, "prevalence": 0.5}
LEARN_SIDE = 128
LEARN_EPOCHS = 8
LEARN_BATCH = 8


def learning_config(name: str, data_seed: int = 0, seed: int = 0) -> RunConfig:
    """The learning test's run config for method ``name`` (also used to measure margins)."""
    cls = method_class(name)
    side = -(-LEARN_SIDE // cls.input_multiple) * cls.input_multiple
    raw: dict[str, Any] = {
        "method": {"name": name, **cls.small_scale_kwargs},
        "data": {
            "dataset": "phantom",
            "image_size": side,
            "options": {**LEARN_OPTIONS, "seed": data_seed},
        },
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {
            "epochs": LEARN_EPOCHS,
            "batch_size": LEARN_BATCH,
            "log_images": 0,
            "device": "cpu",
            "seed": seed,
        },
        "eval": {"batch_size": 32, "select_metric": "val/point_acc_micro"},
    }
    return config_from_dict(raw)


@pytest.mark.parametrize("name", sorted(method_names()))
def test_small_scale_kwargs_are_constructor_arguments(name: str) -> None:
    cls = method_class(name)
    unknown = set(cls.small_scale_kwargs) - set(method_params(name))
    assert not unknown, f"{name}.small_scale_kwargs names no constructor argument: {unknown}"
    learning_config(name)  # builds and validates


@pytest.mark.slow
@pytest.mark.timeout(900)  # PYLON at 256 px: about 3-4 min on 2 quiet cores
@pytest.mark.parametrize("name", sorted(method_names()))
def test_each_method_beats_chance_point_accuracy(name: str, tmp_path: Path) -> None:
    if name.startswith("_test"):
        pytest.skip("test-only method")
    if method_class(name).runner is not None:
        pytest.skip("a multi-stage method (staged runner): its own tests cover what it learns")
    t0 = time.perf_counter()
    result = run_training(learning_config(name), tmp_path)
    best = result.best
    acc, chance = best["val/point_acc_micro"], best["val/point_acc_chance_micro"]
    print(
        f"{name}: best epoch {result.best_epoch} point_acc_micro {acc:.3f} vs chance "
        f"{chance:.3f}, auroc_macro {best['val/auroc_macro']:.3f}, {time.perf_counter() - t0:.0f}s"
    )
    assert acc > max(2 * chance, chance + 0.1)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_cuda_amp_channels_last_run(
    amp_dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from lesionsweep.training import evaluate
    from lesionsweep.training import trainer as trainer_mod

    dtype = getattr(torch, amp_dtype)
    monkeypatch.setattr(trainer_mod, "autocast_dtype", lambda dev, amp: dtype if amp else None)
    cfg = tiny(
        train={
            "device": "auto",
            "amp": True,
            "channels_last": True,
            "in_chans": 3,
            "epochs": 2,
            "keep_resumable": True,
        },
        data={"num_workers": 2},
    )
    result = run_training(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["scaler"] is not None) == (dtype == torch.float16)
    assert all(
        math.isfinite(h["train/loss"]) and math.isfinite(h["val/loss"]) for h in result.history
    )
    m = evaluate(tmp_path, "val", which="last", device="cuda")
    assert m["val/auroc_macro"] == pytest.approx(result.final["val/auroc_macro"], abs=0.05)


# ----------------------------------------------------------------------------- eval.loc_every


def test_loc_every_skips_localization_epochs_only(
    baseline: tuple[TrainResult, list[EpochReport]], tmp_path: Path
) -> None:
    """loc_every=3 over 2 epochs: epoch 1 has AUROC and losses but NaN localization metrics;
    the last epoch is always evaluated and equals the every-epoch baseline (training unchanged);
    a localization select_metric never picks an epoch whose metric was skipped."""
    cfg = tiny(eval={"loc_every": 3})
    result = run_training(cfg, tmp_path / "a")
    first, last = result.history
    ref_first, ref_last = baseline[0].history
    loc_keys = [k for k in ref_first if k.startswith("val/") and "auroc" not in k]
    loc_keys = [k for k in loc_keys if k != "val/loss" and not k.startswith("val/nih_num")]
    assert {"val/maxboxacc_v2", "val/pxap", "val/point_acc_micro", "val/iobb@0.1"} <= set(loc_keys)
    assert all(math.isnan(first[k]) for k in loc_keys)
    assert first["val/auroc_macro"] == ref_first["val/auroc_macro"]
    assert first["val/loss"] == ref_first["val/loss"]
    assert same([last], [ref_last])
    picked = run_training(
        tiny(eval={"loc_every": 3, "select_metric": "val/maxboxacc_v2"}), tmp_path / "b"
    )
    assert picked.best_epoch == 2


def test_checkpoint_policy_and_loc_every_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"eval\.loc_every = 0 is out of range; allowed"):
        tiny(eval={"loc_every": 0})
    with pytest.raises(ConfigError, match=r"train\.keep_checkpoint = 'all'.*best, last, none"):
        tiny(train={"keep_checkpoint": "all"})


def test_keep_resumable_keeps_the_full_last_checkpoint(tmp_path: Path) -> None:
    result = run_training(tiny(train={"keep_resumable": True}), tmp_path)
    ckpt = tmp_path / "checkpoints"
    last, best = load_checkpoint(ckpt / "last.pt"), load_checkpoint(ckpt / "best.pt")
    assert {"optimizer", "schedule", "rng"} <= set(last) and last["epoch"] == 2
    assert best["weights_only"] and "optimizer" not in best
    # AdamW keeps two moments per weight: the resumable file is ~3x the weights-only one
    assert (ckpt / "last.pt").stat().st_size > 2.5 * (ckpt / "best.pt").stat().st_size
    assert result.checkpoint_bytes == sum(p.stat().st_size for p in ckpt.iterdir())


def test_finalize_checkpoints_for_a_stopped_run(tmp_path: Path) -> None:
    """A run stopped after epoch 1 (as an early-stopped trial) keeps its resumable last.pt until
    the sweep applies the policy to it."""
    from lesionsweep.training import finalize_checkpoints

    class Stop(Exception):
        pass

    def stop_after_first(rep: EpochReport) -> None:
        raise Stop

    with pytest.raises(Stop):
        run_training(tiny(), tmp_path, reporter=stop_after_first)
    ckpt = tmp_path / "checkpoints"
    assert {"optimizer", "rng"} <= set(load_checkpoint(ckpt / "last.pt"))  # resumable meanwhile
    kept = finalize_checkpoints(ckpt, "last")
    assert list(kept) == ["last.pt"] and not (ckpt / "best.pt").exists()
    assert load_checkpoint(ckpt / "last.pt")["weights_only"]
    assert finalize_checkpoints(ckpt, "none") == {} and not any(ckpt.iterdir())
    with pytest.raises(TrainingError, match="keep_checkpoint = 'some'"):
        finalize_checkpoints(ckpt, "some")
