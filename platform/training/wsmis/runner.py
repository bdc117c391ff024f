"""The WSMIS runner: stage bookkeeping (fingerprints, done markers, reuse), reporting, the run.

The stages themselves live in :mod:`.stage1`, :mod:`.stage2`, :mod:`.stage3`; each is a function
of the runner (its config, datasets, device, model, stored CAMs and pseudo masks).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...config import RunConfig, dump_config
from ...data import build_dataset
from ...data.types import SplitDataset
from ...errors import ConfigError, DataError, TrainingError
from ...io import atomic_write_text
from ...methods.wsmis import WSMIS
from ..evaluate import json_safe
from ..runtime import (
    build_method,
    seed_everything,
)
from ..tensorboard import TensorBoardLogger
from ..trainer import EpochReport, TrainResult
from . import evaluation, stage1, stage2, stage3
from .context import WsmisContext, best_index
from .fingerprint import fingerprint
from .loading import labels_of

__all__ = ["WsmisRunner", "reported_keys"]


def reported_keys(dice: bool) -> set[str]:
    """Every metric key the pipeline reports (each report carries the latest value of all so far).

    Args:
        dice: whether a split with masks is available (``eval.split`` or ``val-loc``); without
            one the Dice keys are absent.
    """
    keys = {
        "epoch", "stage", "time/elapsed_s", "val/auroc_macro",
        "stage1/loss", "stage1/auroc", "stage1/val_loss",
        "stage2/loss", "stage2/pos", "stage2/neg", "stage2/dp_fg", "stage2/dp_bg",
        "stage2/pseudo_fg_fraction", "stage3/loss",
    }  # fmt: skip
    if dice:
        keys |= {
            "val/dice_pooled", "val/dice_per_image", "stage1/cam_dice",
            "stage1/cam_dice_per_image", "stage1/cam_dice_oracle", "stage2/pseudo_dice",
            "stage2/pseudo_dice_per_image", "stage3/dice_pooled",
        }  # fmt: skip
    return keys


class WsmisRunner(WsmisContext):
    """Runs stage 1 -> 2 -> 3 of one config into ``out_dir`` (see the package docstring).

    Class-level entry points (the :class:`~lesionsweep.training.runners.StagedRunner`
    protocol): :meth:`run_pipeline` and :meth:`evaluate_run`.
    """

    @staticmethod
    def evaluate_run(
        run_dir: str | Path,
        cfg: RunConfig,
        split: str,
        *,
        batch_size: int | None = None,
        device: str = "auto",
        which: str = "best",
    ) -> dict[str, float]:
        """Evaluate a finished run folder once on ``split`` (:func:`.evaluation.evaluate_run`)."""
        return evaluation.evaluate_run(
            run_dir, cfg, split, batch_size=batch_size, device=device, which=which
        )

    @classmethod
    def run_pipeline(
        cls,
        cfg: RunConfig,
        out_dir: Path,
        reporter: Callable[[EpochReport], None] | None = None,
        resume: bool = True,
        *,
        datasets: tuple[SplitDataset, SplitDataset, SplitDataset | None] | None = None,
        progress: bool = False,
    ) -> TrainResult:
        """Run stages 1 -> 2 -> 3 for ``cfg`` into ``out_dir``.

        Args:
            cfg: the run config.
            out_dir: the trial folder.
            reporter: called with an :class:`EpochReport` after every epoch of every stage.
            resume: reuse finished stages whose config fingerprint matches.
            datasets: ``(train, eval, dice)`` datasets replacing those built from ``cfg.data``
                (``dice`` must deliver masks, or be ``None`` for no Dice metrics).
            progress: print one line per report (and per reused stage) to stderr.

        Returns:
            The :class:`TrainResult` over the global step series.
        """
        return cls(cfg, Path(out_dir), reporter, datasets, progress).run(resume)

    def fingerprint(self, stage: int) -> dict[str, Any]:
        return fingerprint(self.flat, stage)

    def done(self, stage: int) -> dict[str, Any] | None:
        p = self.out / f"stage{stage}" / "done.json"
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return d if d.get("fingerprint") == self.fingerprint(stage) else None

    def forget(self, stage: int) -> None:
        """Remove the ``done.json`` markers of stages ``stage..3`` (before ``stage`` re-runs):
        a crash inside the re-run then never leaves a later stage marked finished over outputs
        that no longer match its inputs."""
        for s in range(stage, 4):
            (self.out / f"stage{s}" / "done.json").unlink(missing_ok=True)

    def mark_done(self, stage: int, metrics: dict[str, float], history: list[dict[str, float]]):

        d = {
            "fingerprint": self.fingerprint(stage),
            "metrics": json_safe(metrics),
            "history": [json_safe(h) for h in history],
            "step": self.step,
        }
        text = json.dumps(d, indent=1, allow_nan=False)
        atomic_write_text(self.out / f"stage{stage}" / "done.json", text)

    # ------------------------------------------------------------------ main
    def run(self, resume: bool) -> Any:

        cfg = self.cfg
        seed_everything(cfg.train.seed)
        if self.datasets is not None:
            self.train_ds, self.eval_ds, self.loc_ds = self.datasets
            if self.loc_ds is not None and not self.loc_ds.info.has_masks:
                raise ConfigError("the Dice dataset given to run_pipeline has no masks")
        else:
            self.train_ds = build_dataset(cfg.data, "train")
            self.eval_ds = build_dataset(cfg.data, cfg.eval.split)
            self.loc_ds = self._dice_split(build_dataset)
        self.info = self.train_ds.info
        self._check_select_metric()
        model = build_method(cfg, self.info)
        if not isinstance(model, WSMIS):
            raise ConfigError(f"method {cfg.method.name!r} is not the wsmis pipeline")
        self.model = model.to(self.device)
        self.s = dict(model.settings)
        self.train_labels, self.train_known = labels_of(self.train_ds)
        self.pos_idx = np.nonzero((self.train_labels * self.train_known > 0.5).any(1))[0]
        if len(self.pos_idx) == 0:
            raise DataError(
                f"the train split of {self.info.name!r} has no positive image: the WSMIS "
                "pipeline needs positives to learn CAMs, IRNet and pseudo masks"
            )

        # only now that data, method and metrics are known to build: a bad knob or a missing
        # dataset file leaves no half-written run folder behind (as the ordinary trainer)
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out / "config.yaml")
        rerun = not resume
        try:
            for stage, fn in ((1, stage1.run), (2, stage2.run), (3, stage3.run)):
                self.stage_history: list[dict[str, float]] = []
                d = None if rerun else self.done(stage)
                if d is not None and self.load_stage(stage, d):
                    self.log(f"stage {stage}: finished in {self.out / f'stage{stage}'}, loaded")
                    continue
                rerun = True
                self.forget(stage)
                if self.tb is None:
                    # events of an interrupted earlier run at the re-run steps are hidden
                    self.tb = TensorBoardLogger(self.out / "tensorboard", purge_step=self.step + 1)
                (self.out / f"stage{stage}").mkdir(parents=True, exist_ok=True)
                seed_everything(cfg.train.seed + 1000 * stage)
                metrics = fn(self)
                self.mark_done(stage, metrics, self.stage_history)
        finally:
            if self.tb is not None:
                self.tb.close()
                self.tb = None

        key = cfg.eval.select_metric
        if not self.history:
            raise TrainingError(f"{self.out}: no step was recorded")
        b = best_index([h.get(key, math.nan) for h in self.history], cfg.eval.select_mode)
        return TrainResult(
            final=dict(self.history[-1]),
            best=dict(self.history[b]),
            best_epoch=int(self.history[b]["epoch"]),
            epochs_run=len(self.history),
            history=[dict(h) for h in self.history],
            wall_time_s=time.perf_counter() - self.t0,
            out_dir=self.out,
        )

    def _check_select_metric(self) -> None:
        """Refuse an ``eval.select_metric`` the pipeline never reports (before any stage)."""
        key = self.cfg.eval.select_metric
        if self.loc_ds is None and key.startswith("val/dice"):
            raise ConfigError(
                f"eval.select_metric = {key!r} needs masks, but neither "
                f"eval.split = {self.cfg.eval.split!r} nor a 'val-loc' split of dataset "
                f"{self.train_ds.info.name!r} has them; select on val/auroc_macro instead"
            )
        keys = reported_keys(self.loc_ds is not None)
        if key not in keys:
            raise ConfigError(
                f"eval.select_metric = {key!r} is not a reported metric of wsmis; "
                f"choose one of: {', '.join(sorted(keys))}"
            )

    def _dice_split(self, build: Callable[..., Any]) -> Any:
        if self.eval_ds.info.has_masks:
            return self.eval_ds

        try:
            ds = build(self.cfg.data, "val-loc")
        except DataError:
            ds = None
        if ds is None or not ds.info.has_masks:
            self.log(f"no masks in {self.cfg.eval.split!r} and no 'val-loc' split: no Dice")
            return None
        return ds

    def load_stage(self, stage: int, d: dict[str, Any]) -> bool:
        """Load a finished stage's outputs; False (the stage re-runs) if a file is unreadable."""

        sd = self.out / f"stage{stage}"
        try:
            if stage == 1:
                self.load_model(sd / "classifier.pt", self.model)
                splits = self._cam_splits()
                self.cams = {s: np.load(sd / f"cams_{s}.npy") for s in splits}
                self.cam_index = {s: np.load(sd / f"cams_{s}_index.npy") for s in splits}
            elif stage == 2:
                self.pseudo = np.load(sd / "pseudo_masks_train.npy")
                self.pseudo_index = np.load(sd / "pseudo_masks_train_index.npy")
            elif not (sd / "segmenter.pt").is_file():
                raise OSError(f"{sd / 'segmenter.pt'} is missing")
        except (OSError, ValueError, KeyError, TrainingError) as e:
            self.log(f"stage {stage}: cannot reuse {sd} ({e}); running it again")
            return False
        hist = [{k: float(v) if v is not None else math.nan for k, v in h.items()}
                for h in d["history"]]  # fmt: skip
        self.history.extend(hist)
        if hist:
            self.latest.update({k: v for k, v in hist[-1].items() if k not in ("epoch", "stage")})
        self.step = int(d["step"])
        return True

    def _cam_splits(self) -> list[str]:
        return ["train"] + (["loc"] if self.loc_ds is not None else [])
