"""The state the WSMIS stages share, and the utilities they use (loaders, reports, checkpoints).

:class:`WsmisContext` is what each stage function (:mod:`.stage1`, :mod:`.stage2`,
:mod:`.stage3`) receives; :class:`~.runner.WsmisRunner` extends it with the stage bookkeeping.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ...data.types import DatasetInfo, SplitDataset
from ...errors import ConfigError, TrainingError
from ...fileio import atomic_write_text
from ...methods.wsmis import WSMIS
from ...ranking import best_index
from ..checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ..evaluate import json_safe
from ..runtime import autocast_dtype, check_training_split, prepare_images, resolve_device
from ..tensorboard import TensorBoardLogger
from ..trainer import EpochReport
from .loading import IndexedLoader

__all__ = ["WsmisContext", "best_index"]


class WsmisContext:
    """Config, device, datasets, the stage-1 model and what the stages hand to each other.

    Set by the runner before stage 1 (``train_ds``, ``eval_ds``, ``loc_ds``, ``info``,
    ``model``, ``s`` = the model's pipeline settings, ``pos_idx``) and by the stages (``cams`` /
    ``cam_index`` by stage 1, ``pseudo`` / ``pseudo_index`` by stage 2).
    """

    train_ds: SplitDataset
    eval_ds: SplitDataset
    loc_ds: SplitDataset | None
    info: DatasetInfo
    model: WSMIS
    s: dict[str, Any]
    pos_idx: np.ndarray
    train_labels: np.ndarray
    train_known: np.ndarray
    cams: dict[str, np.ndarray]
    cam_index: dict[str, np.ndarray]
    pseudo: np.ndarray
    pseudo_index: np.ndarray
    stage_history: list[dict[str, float]]
    tb: TensorBoardLogger | None

    def __init__(
        self,
        cfg: Any,
        out_dir: Path,
        reporter: Callable[[Any], None] | None,
        datasets: tuple[SplitDataset, SplitDataset, SplitDataset | None] | None = None,
        progress: bool = False,
    ) -> None:

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ConfigError(
                "method 'wsmis' runs its three stages in one process; run it without "
                "distributed data parallel (one worker per trial)"
            )
        check_training_split(cfg.eval.split)
        self.cfg = cfg
        self.out = out_dir
        self.reporter = reporter
        self.device = resolve_device(cfg.train.device)
        # bf16 autocast only: the stages run without a gradient scaler, which fp16 would need
        amp = autocast_dtype(self.device, cfg.train.amp)
        self.amp = amp if amp == torch.bfloat16 else None
        self.step = 0
        self.latest: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.t0 = time.perf_counter()
        self.flat = cfg.to_flat()
        self.tb: Any = None
        self.datasets = datasets
        self.progress = progress

    # ------------------------------------------------------------------ utilities
    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[wsmis] {msg}", file=sys.stderr, flush=True)

    def autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=bool(self.amp)
        )

    def images(self, batch: Any) -> torch.Tensor:

        return prepare_images(
            batch.images, self.device, self.cfg.train.in_chans, self.cfg.train.channels_last
        )

    def loader(
        self,
        ds: SplitDataset,
        indices: Sequence[int] | np.ndarray,
        *,
        train: bool,
        shuffle: bool = False,
        gen: torch.Generator | None = None,
        masks: bool = False,
    ) -> IndexedLoader:
        """``(indices, batch)`` pairs over ``ds[indices]``: training (``train.batch_size``, last
        partial batch dropped when there is more than one) or evaluation batches
        (``eval.batch_size``); ``masks`` for batches that need ``batch.masks``."""
        bs = self.cfg.train.batch_size if train else self.cfg.eval.batch_size
        return IndexedLoader(
            ds,
            indices,
            batch_size=bs,
            num_workers=self.cfg.data.num_workers,
            device=self.device,
            shuffle=shuffle,
            generator=gen,
            drop_last=train and len(indices) > bs,
            masks=masks,
        )

    def save_model(self, path: Path, model: nn.Module, extra: dict[str, Any] | None = None):

        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.step,
            "model": model.state_dict(),
            "config": self.cfg.to_dict(),
            **(extra or {}),
        }
        save_checkpoint(path, state)

    def load_model(self, path: Path, model: nn.Module) -> dict[str, Any]:

        state = load_checkpoint(path, map_location=self.device)
        model.load_state_dict(state["model"])
        return state

    def report(self, stage: int, metrics: Mapping[str, float], ckpt: Path | None) -> None:

        self.step += 1
        self.latest.update({k: float(v) for k, v in metrics.items()})
        row = {"epoch": float(self.step), "stage": float(stage), **self.latest}
        row["time/elapsed_s"] = time.perf_counter() - self.t0
        self.history.append(row)
        self.stage_history.append(row)
        lines = "".join(json.dumps(json_safe(h)) + "\n" for h in self.history)
        atomic_write_text(self.out / "metrics.jsonl", lines)
        if self.tb is not None:
            # what this step measured, plus the pipeline's current output (val/*, carried over)
            fresh = {k: v for k, v in row.items() if k.startswith("val/") or k in metrics}
            fresh.update(stage=float(stage), **{"time/elapsed_s": row["time/elapsed_s"]})
            self.tb.log_scalars(fresh, self.step)
            self.tb.flush()
        key = self.cfg.eval.select_metric
        vals = [h.get(key, math.nan) for h in self.history]
        best = best_index(vals, self.cfg.eval.select_mode)
        self.log(
            f"step {self.step} (stage {stage}) "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(f"stage{stage}"))
        )
        if self.reporter is not None:
            self.reporter(
                EpochReport(
                    epoch=self.step,
                    metrics=dict(row),
                    checkpoint_dir=ckpt,
                    is_best=best == len(self.history) - 1,
                )
            )

    def check_finite(self, loss: torch.Tensor, stage: int) -> None:
        if not bool(torch.isfinite(loss.detach())):
            raise TrainingError(
                f"wsmis stage {stage}: non-finite training loss {float(loss)}; lower the "
                "stage's learning rate or set train.grad_clip"
            )
