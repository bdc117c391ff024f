"""Viniavskyi et al. 2020 (methods.md section 4): CAM -> IRNet -> segmentation, as one method.

The registered method ``wsmis`` is the stage-1 classifier (its ``forward`` follows the platform
contract: image logits ``[B, K]`` and CAMs ``[B, K, h, w]`` at 1/8 of the input). Its classmethod
:meth:`WSMIS.run_pipeline` (called by :func:`lesionsweep.training.run_training` for methods that
have one) runs the three stages end to end inside one trial:

1. **Classifier** (``train.epochs`` epochs, ``optim.*``): timm backbone with output stride 8 and
   one :class:`~.dropblock.DropBlock2D` applied after each of the last two stages (the same
   instance, as the authors' ``resnet50_dropblock``), its ``drop_prob`` warmed up linearly from 0
   over ``dropblock_warmup_steps`` training steps; global average pooling, a linear head, the
   configured classification loss (BCE by default). Class maps by ``cam_kind``
   (:mod:`.cams`), normalised by ReLU + per-map maximum.
2. **IRNet** (``stage2_epochs``, ``stage2_lr``): the boundary/displacement branches over a frozen
   backbone (:mod:`.irnet`), trained on the positive train images with grid labels from their
   CAMs (``ir_labels``: ``confident`` = conf_fg/conf_bg with an ignore band, the IRNet paper;
   ``raw`` = CAM > ``cam_threshold``, no ignore band, the authors' pneumothorax code; the open
   question of methods.md section 4.5), and the losses of :mod:`.affinity`. The default is
   ``raw``: it won on the phantom (pneumothorax, test_resnet, seed 0; pseudo-mask Dice 0.25 vs
   0.12 at 96 px and 0.37 vs 0.30 at 128 px; final Dice 0.31 vs 0.12 and 0.41 vs 0.32). With
   ``confident`` labels too few pixels of the blobby maps fall below ``conf_bg``, IRNet sees
   almost no negative pairs, learns no boundary and the walk floods the image. SGD without
   momentum, ``stage2_lr`` for the boundary branch and 10x for the displacement branch, weight
   decay 1e-4, polynomial decay (power 0.9), as the reference. Pseudo masks: random walk of the
   CAMs with ``(1 - B)^beta`` affinities, ``2^exp_times`` steps, radius ``rw_radius``, then
   ``bg_threshold`` (:func:`.affinity.masks_from_random_walk`) on every positive train image
   (negative images get empty masks).
3. **Segmentation** (``stage3_epochs``, ``stage3_lr``): :class:`~.unet.UNet` over the same timm
   backbone (standard stride) trained with per-pixel BCE on the pseudo masks; the platform's
   optimiser (:func:`lesionsweep.training.build_optimizer`: ``optim.name``, ``optim.momentum``,
   ``optim.weight_decay`` on weights of rank >= 2), ``stage3_lr`` for the decoder and a tenth of
   it for the encoder (the reference's 1e-3 / 1e-4), polynomial decay.

Small images: pairs live on the 1/4 grid, and ``radius`` / ``rw_radius`` are read on the
reference's 128-pixel grid (512-px input) and scaled with the grid:
``max(2, round(r * min(grid) / 128))`` (:func:`effective_radius`; 512 px keeps 10 and 5, a 128-px
image gets 3 and 2 on its 32-pixel grid). Without the scaling the 2^8-step walk spreads over the
whole of a small grid; on the phantom (96 px, raw IR labels) the pseudo-mask Dice was 0.25
scaled against 0.13 clipped.

Evaluation and reports: classification AUROC on ``eval.split``; Dice (``sigmoid > 0.5`` /
masks, TP/FP/FN pooled over every known (image, class) pair, negatives with empty masks
included, and the per-image mean; :mod:`lesionsweep.metrics.dice`) on ``eval.split`` if it has
masks, else on ``val-loc`` when the dataset has it. Every report carries ``epoch``, a step counter
increasing across the stages (stage-1 epochs, then stage-2, then stage-3), and the latest value
of every metric so far. ``val/dice_pooled`` / ``val/dice_per_image`` are always the Dice of the
masks the pipeline would output at that point: stage-1 CAMs thresholded at ``cam_threshold`` on
images the classifier calls positive (``sigmoid(logit) > 0.5``) during stages 1 and 2, the U-Net
during stage 3. Stage keys: ``stage1/loss``, ``stage1/auroc``, ``stage1/cam_dice`` (that gated
CAM Dice), ``stage1/cam_dice_oracle`` (CAMs gated by the true labels), ``stage2/loss`` (+ its four
terms), ``stage2/pseudo_dice`` / ``stage2/pseudo_dice_per_image`` (random-walk masks with the
true labels on the Dice split), ``stage3/loss``.

Files (``out_dir``), written only once the datasets, the method and the selection metric are
known to build (a bad knob leaves no run folder), each atomically (temp file + rename, so a
crash never leaves a torn file): ``config.yaml``, ``metrics.jsonl``, ``tensorboard/`` (a scalar
per key measured at each step, and the ``val/*`` keys at every step), and per stage
``stageN/done.json`` (metrics, history and a fingerprint of the config keys the stage depends on),
``stageN/checkpoint/model.pt`` (rewritten every epoch; the folder is what the reporter gets),
``stage1/classifier.pt``, ``stage1/cams_train.npy`` (positive train images) and
``stage1/cams_loc.npy`` (the Dice split), float16 ``[n, K, h, w]`` normalised CAMs at stride 8,
each with ``cams_*_index.npy`` (dataset indices), ``stage1/logits_loc.npy``,
``stage2/irnet.pt``, ``stage2/pseudo_masks_train.npy`` (``np.packbits`` along the width of bool
``[n, K, H, W]``) with its index file, ``stage3/segmenter.pt``. With ``resume=True`` a stage whose
``done.json`` fingerprint matches the current config is loaded instead of re-run (a changed knob
re-runs its stage and the later ones); an interrupted stage restarts from its beginning. Before
stage N runs, the ``done.json`` of stages N..3 are removed, so after a crash inside it no later
stage counts as finished over inputs it was not made from.

Test splits: :func:`lesionsweep.training.evaluate` on a run folder calls
:meth:`WSMIS.evaluate_run`, which scores the stage-1 classifier's logits (AUROC) and the stage-3
U-Net's masks (Dice, PxAP, ...) on any split with the platform's ``LocalizationSuite``.

Single process only: under an initialised multi-rank ``torch.distributed`` the pipeline refuses.
Mixed precision: bf16 autocast on CUDA when ``train.amp`` (and the GPU has bf16; otherwise fp32,
since the stages use no gradient scaler); CAMs, the IRNet losses and the random walk are float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lesionsweep.fileio import atomic_write
from torch import nn
from torch.utils.data import Dataset, Subset

from ..backbones import create_backbone
from ..base import Method, MethodOutput, register_method
from .affinity import (
    PairIndex,
    affinity_loss,
    ir_labels_from_cams,
    masks_from_random_walk,
    random_walk,
)
from .cams import CAM_KINDS, class_maps, normalize_maps
from .dropblock import DropBlock2D, LinearWarmup
from .irnet import IRNet, grid_size
from .unet import UNet

__all__ = ["WSMIS", "effective_radius", "reported_keys"]

IR_LABEL_MODES = ("confident", "raw")
INIT_CHOICES = ("classifier", "pretrained")

# config keys (flat) each stage depends on, on top of every method knob it reads
_STAGE_KNOBS: dict[int, tuple[str, ...]] = {
    1: (
        "backbone", "pretrained", "in_chans", "drop_prob", "block_size",
        "dropblock_warmup_steps", "cam_kind", "cam_threshold",
    ),
    2: (
        "ir_labels", "conf_fg", "conf_bg", "ir_backbone", "radius", "beta",
        "exp_times", "rw_radius", "bg_threshold", "stage2_epochs", "stage2_lr",
    ),
    3: ("seg_encoder_init", "stage3_epochs", "stage3_lr"),
}  # fmt: skip
_VOLATILE = {"train.device", "train.log_images", "data.num_workers", "data.root", "data.cache"}


def effective_radius(radius: int, grid: tuple[int, int]) -> int:
    """Radius used on a grid: ``max(2, round(radius * min(grid) / 128))``.

    Radii are given for the reference's 128-pixel grid (a 512-px input); scaling them with the
    grid keeps the pairs and the random walk's reach the same fraction of the image.
    """
    return int(max(2, math.floor(radius * min(grid) / 128 + 0.5)))


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


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@register_method("wsmis")
class WSMIS(Method):
    """Stage-1 classifier of the WSMIS pipeline (all pipeline knobs are constructor kwargs).

    ``forward(x [B, C, H, W])`` returns logits ``[B, K]``, raw CAMs ``[B, K, H/8, W/8]``
    (``sum_c W[k, c] A_c``, logit scale: their spatial mean plus the bias is the logit) and
    ``extras["features"]``, the last feature map ``A`` ``[B, C, H/8, W/8]``.

    Args:
        num_classes, criterion: see :class:`Method`.
        backbone, pretrained, in_chans: timm backbone (output stride 8).
        drop_prob, block_size: DropBlock after the last two stages (``drop_prob = 0`` disables).
        dropblock_warmup_steps: training steps of the linear drop_prob warm-up from 0.
        cam_kind: ``cam``, ``gradcam`` or ``gradcam++`` for the maps fed to stage 2.
        cam_threshold: threshold on normalised CAMs for ``raw`` IR labels and the CAM baseline.
        ir_labels: ``confident`` or ``raw`` IRNet training labels.
        conf_fg, conf_bg: confident foreground / background thresholds (``conf_bg < conf_fg``).
        ir_backbone: frozen IRNet backbone: ``classifier`` (a copy of the trained stage-1
            backbone) or ``pretrained`` (a fresh timm backbone with ``pretrained`` weights, as
            the reference's ImageNet ResNet-50).
        radius: training pair radius on the 1/4 grid (reference 10).
        beta, exp_times, rw_radius: random walk (reference 10, 8, 5).
        bg_threshold: background score of the random-walk masks (reference 0.25).
        stage2_epochs, stage2_lr: IRNet training.
        seg_encoder_init: U-Net encoder start: ``classifier`` (stage-1 backbone weights) or
            ``pretrained`` (timm weights per ``pretrained``).
        stage3_epochs, stage3_lr: segmentation training.
    """

    map_kind = "logits"
    input_multiple = 32

    def __init__(
        self,
        num_classes: int,
        criterion: nn.Module | None = None,
        backbone: str = "resnet50",
        pretrained: bool | str = False,
        in_chans: int = 1,
        drop_prob: float = 0.2,
        block_size: int = 7,
        dropblock_warmup_steps: int = 10,
        cam_kind: str = "gradcam++",
        cam_threshold: float = 0.2,
        ir_labels: str = "raw",
        conf_fg: float = 0.30,
        conf_bg: float = 0.05,
        ir_backbone: str = "classifier",
        radius: int = 10,
        beta: float = 10.0,
        exp_times: int = 8,
        rw_radius: int = 5,
        bg_threshold: float = 0.25,
        stage2_epochs: int = 10,
        stage2_lr: float = 0.1,
        seg_encoder_init: str = "classifier",
        stage3_epochs: int = 40,
        stage3_lr: float = 1e-3,
    ) -> None:
        super().__init__(num_classes, criterion)
        _check(cam_kind in CAM_KINDS, f"cam_kind={cam_kind!r}; allowed: {', '.join(CAM_KINDS)}")
        _check(
            ir_labels in IR_LABEL_MODES,
            f"ir_labels={ir_labels!r}; allowed: {', '.join(IR_LABEL_MODES)}",
        )
        for key, val in (("ir_backbone", ir_backbone), ("seg_encoder_init", seg_encoder_init)):
            _check(val in INIT_CHOICES, f"{key}={val!r}; allowed: {', '.join(INIT_CHOICES)}")
        for key, val in (
            ("cam_threshold", cam_threshold), ("conf_fg", conf_fg), ("conf_bg", conf_bg),
            ("bg_threshold", bg_threshold),
        ):  # fmt: skip
            _check(0.0 < float(val) < 1.0, f"{key}={val!r} must be in (0, 1)")
        _check(float(conf_bg) < float(conf_fg), f"conf_bg={conf_bg} must be < conf_fg={conf_fg}")
        _check(int(radius) >= 2, f"radius={radius!r} must be >= 2 (grid pixels)")
        _check(int(rw_radius) >= 2, f"rw_radius={rw_radius!r} must be >= 2 (grid pixels)")
        _check(0 <= int(exp_times) <= 12, f"exp_times={exp_times!r} must be in 0..12")
        _check(float(beta) > 0, f"beta={beta!r} must be > 0")
        _check(int(dropblock_warmup_steps) >= 0, "dropblock_warmup_steps must be >= 0")
        for key, val in (("stage2_epochs", stage2_epochs), ("stage3_epochs", stage3_epochs)):
            _check(int(val) >= 1, f"{key}={val!r} must be >= 1")
        for key, val in (("stage2_lr", stage2_lr), ("stage3_lr", stage3_lr)):
            _check(float(val) > 0, f"{key}={val!r} must be > 0")

        self.in_chans = int(in_chans)
        self.backbone_name = backbone
        self.pretrained = pretrained
        self.settings: dict[str, Any] = dict(
            cam_kind=cam_kind, cam_threshold=float(cam_threshold), ir_labels=ir_labels,
            conf_fg=float(conf_fg), conf_bg=float(conf_bg), ir_backbone=ir_backbone,
            radius=int(radius), beta=float(beta), exp_times=int(exp_times),
            rw_radius=int(rw_radius), bg_threshold=float(bg_threshold),
            stage2_epochs=int(stage2_epochs), stage2_lr=float(stage2_lr),
            seg_encoder_init=seg_encoder_init, stage3_epochs=int(stage3_epochs),
            stage3_lr=float(stage3_lr),
        )  # fmt: skip
        self.backbone = create_backbone(backbone, self.in_chans, pretrained, output_stride=8)
        self.dropblock = DropBlock2D(0.0 if dropblock_warmup_steps else drop_prob, block_size)
        self.drop_schedule = LinearWarmup(drop_prob, dropblock_warmup_steps)
        self.register_buffer("dropblock_step", torch.zeros((), dtype=torch.long))
        names = self.backbone.body.feature_info.module_name()
        for name in names[-2:]:
            self._stage_module(name).register_forward_hook(self._drop_hook)
        self.head = nn.Linear(self.backbone.channels[-1], self.num_classes)

    def _stage_module(self, name: str) -> nn.Module:
        body = self.backbone.body
        for cand in (name, name.replace(".", "_")):
            try:
                return body.get_submodule(cand)
            except AttributeError:
                continue
        raise ValueError(f"backbone {self.backbone_name!r}: cannot find feature stage {name!r}")

    def _drop_hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return self.dropblock(output)

    def head_outputs(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` ``[B, C, h, w]`` -> (logits ``[B, K]``, raw CAMs ``[B, K, h, w]``)."""
        cam = torch.einsum("bchw,kc->bkhw", features, self.head.weight.to(features.dtype))
        logits = cam.mean(dim=(2, 3)) + self.head.bias.to(cam.dtype)
        return logits, cam

    def forward(self, x: torch.Tensor) -> MethodOutput:
        if self.training:
            self.dropblock.drop_prob = self.drop_schedule(int(self.dropblock_step))
            self.dropblock_step += 1
        features = self.backbone(x)[-1]
        logits, cam = self.head_outputs(features)
        return MethodOutput(logits=logits, maps=cam, extras={"features": features})

    def normalized_cams(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """Normalised class maps ``[B, K, H/8, W/8]`` in ``[0, 1]`` of ``kind`` (default
        ``cam_kind``) for images ``x``; the model is used as it is (call ``eval()`` first)."""
        with torch.no_grad():
            feats = self.backbone(x)[-1]
        return self.cams_from_features(feats, kind)

    def cams_from_features(self, features: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """As :meth:`normalized_cams` from the last feature map ``A`` ``[B, C, h, w]``."""
        kind = kind or self.settings["cam_kind"]
        feats = features.detach().float()
        if kind == "cam":
            logits, _ = self.head_outputs(feats)
            maps = class_maps(feats, logits, self.head.weight, "cam")
        else:
            with torch.enable_grad():
                a = feats.detach().requires_grad_(True)
                logits, _ = self.head_outputs(a)
                maps = class_maps(a, logits, self.head.weight, kind)
        return normalize_maps(maps)

    # ------------------------------------------------------------------ the pipeline
    @classmethod
    def run_pipeline(
        cls,
        cfg: Any,
        out_dir: Path,
        reporter: Callable[[Any], None] | None = None,
        resume: bool = True,
        *,
        datasets: tuple[Dataset, Dataset, Dataset | None] | None = None,
        progress: bool = False,
    ) -> Any:
        """Run stages 1 -> 2 -> 3 for ``cfg`` into ``out_dir`` (see the module docstring).

        Args:
            cfg: the run config (:class:`lesionsweep.config.RunConfig`).
            out_dir: the trial folder.
            reporter: called with a :class:`lesionsweep.training.trainer.EpochReport` after
                every epoch of every stage.
            resume: reuse finished stages whose config fingerprint matches.
            datasets: ``(train, eval, dice)`` datasets replacing those built from ``cfg.data``
                (``dice`` must deliver masks, or be ``None`` for no Dice metrics).
            progress: print one line per report (and per reused stage) to stderr.

        Returns:
            :class:`lesionsweep.training.trainer.TrainResult` over the global step series.
        """
        return _Pipeline(cfg, Path(out_dir), reporter, datasets, progress).run(resume)

    @classmethod
    def evaluate_run(
        cls,
        run_dir: str | Path,
        cfg: Any,
        split: str,
        *,
        batch_size: int | None = None,
        device: str = "auto",
        which: str = "best",
    ) -> dict[str, float]:
        """Evaluate a finished pipeline run folder once on ``split``.

        The hook behind :func:`lesionsweep.training.evaluate` for this method (which calls it for
        a run folder whose configured method class has an ``evaluate_run``). It scores what the
        pipeline outputs: image logits ``[B, K]`` of the stage-1 classifier
        (``stage1/classifier.pt``) and mask logits ``[B, K, H, W]`` (full image resolution) of
        the stage-3 U-Net (``stage3/segmenter.pt``), fed together to the platform's
        :class:`~lesionsweep.metrics.LocalizationSuite` with ``map_kind="logits"``. So
        ``dice_pooled`` / ``dice_per_image`` are ``sigmoid > 0.5`` over every (image, class) pair
        with a known label, and ``auroc_macro`` the classifier's, exactly as the pipeline's
        ``val/*`` keys; the suite adds its other keys for the dataset (``pxap`` from the
        per-map min-max normalised U-Net logits, box metrics where the dataset has boxes).

        Args:
            run_dir: the ``out_dir`` given to :meth:`run_pipeline`.
            cfg: the run config (its ``config.yaml``, evaluation overrides applied).
            split: any split of the dataset (``val``, ``test``, ``test-loc``, ...).
            batch_size: overrides ``eval.batch_size``.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            which: ``best`` or ``last``; both mean the finished stage-3 U-Net (the pipeline's
                output; it keeps no per-epoch best copy).

        Returns:
            ``{"<split>/<suite key>": value, ..., "epoch": the step of the stage-3 model}``.

        Raises:
            ConfigError: bad ``which``; ``run_dir`` holds no finished pipeline (a missing
                ``stage1/classifier.pt``, ``stage3/segmenter.pt`` or ``stage3/done.json``), or
                its stage-3 outputs belong to another config than ``config.yaml`` (a re-run with
                changed knobs that did not finish); the message names the folder.
            TrainingError: weights that do not fit the configured method, non-finite outputs.
        """
        from lesionsweep.config import MethodConfig
        from lesionsweep.data import build_dataset
        from lesionsweep.errors import TrainingError
        from lesionsweep.metrics import LocalizationSuite
        from lesionsweep.training.checkpoint import load_checkpoint
        from lesionsweep.training.runtime import (
            autocast_dtype,
            build_method,
            make_loader,
            prepare_images,
            resolve_device,
            seed_everything,
        )

        run = Path(run_dir)
        if which not in ("best", "last"):
            raise _config_error(f"evaluate: which = {which!r}; choose 'best' or 'last'")
        clf_path, seg_path = run / "stage1" / "classifier.pt", run / "stage3" / "segmenter.pt"
        for p in (clf_path, seg_path):
            if not p.is_file():
                raise _config_error(
                    f"evaluate: {run} holds no finished wsmis pipeline: {p.relative_to(run)} is "
                    "missing (run or resume the pipeline to the end of stage 3 first)"
                )
        _check_stage3_current(run)

        dev = resolve_device(device)
        seed_everything(cfg.train.seed)
        ds = build_dataset(cfg.data, split)
        info = ds.info
        # weights come from the checkpoints: never fetch pretrained ones
        kwargs = {**dict(cfg.method.kwargs), "pretrained": False}
        clf = build_method(cfg.replace(method=MethodConfig(cfg.method.name, kwargs)), info)
        if not isinstance(clf, WSMIS):
            raise _config_error(f"method {cfg.method.name!r} is not the wsmis pipeline")
        unet = UNet(create_backbone(clf.backbone_name, clf.in_chans, False), info.num_classes)
        states = {}
        for net, path in ((clf, clf_path), (unet, seg_path)):
            states[path] = load_checkpoint(path, map_location=dev)
            try:
                net.load_state_dict(states[path]["model"])
            except (RuntimeError, KeyError) as e:
                raise TrainingError(
                    f"{path}: weights do not fit the configured method: {e}"
                ) from None
            net.to(dev).eval()
        amp = autocast_dtype(dev, cfg.train.amp)
        amp = amp if amp == torch.bfloat16 else None  # as the pipeline: bf16 or fp32
        loader = make_loader(
            ds,
            batch_size=int(batch_size or cfg.eval.batch_size),
            num_workers=cfg.data.num_workers,
            device=dev,
        )
        suite = LocalizationSuite(info, cfg.data.image_size, cfg.eval.cam_curve_interval)
        n = 0
        with torch.no_grad():
            for batch in loader:
                x = prepare_images(batch.images, dev, cfg.train.in_chans, cfg.train.channels_last)
                with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=bool(amp)):
                    logits = clf(x).logits
                    maps = unet(x)
                logits, maps = logits.float(), maps.float()
                if not bool(torch.isfinite(logits).all() & torch.isfinite(maps).all()):
                    raise TrainingError(
                        f"{run}: non-finite classifier logits or U-Net maps on {split!r} images "
                        f"{', '.join(map(str, batch.ids[:3]))}..."
                    )
                suite.accumulate(logits, maps, batch, "logits")
                n += len(batch)
        if n == 0:
            raise TrainingError(f"evaluate: split {split!r} is empty: no images to evaluate")
        out = {f"{split}/{k}": float(v) for k, v in suite.compute().items()}
        out["epoch"] = float(states[seg_path].get("epoch", 0))
        return out


# ====================================================================== data helpers


class _IndexedLoader:
    """Batches of a subset of a dataset with their dataset indices.

    Iterating yields ``(indices, batch)``: ``indices`` int64 ``[B]`` (positions in ``ds``) and
    the :class:`~lesionsweep.data.types.Batch` of those samples. Each pass builds the platform's
    loader (:func:`lesionsweep.training.runtime.make_loader`: pinned memory on CUDA, seeded
    workers) over the subset in the pass's order, shuffled by one ``randperm`` of ``generator``
    per pass (as a shuffling ``DataLoader``) or as given.

    Args:
        ds: the dataset.
        indices: the dataset positions to visit.
        batch_size, num_workers, device, drop_last: as :func:`make_loader`.
        shuffle: a new order per pass (``generator`` required).
        generator: the shuffling generator (also seeds the loader's workers).
        masks: deliver ``batch.masks`` and boxes (``False``: image labels only).
    """

    def __init__(
        self,
        ds: Dataset,
        indices: Sequence[int],
        *,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        masks: bool = False,
    ) -> None:
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.device = device
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.masks = masks

    def __len__(self) -> int:
        n, bs = len(self.indices), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        from lesionsweep.training.runtime import make_loader

        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).numpy()]
        loader = make_loader(
            Subset(self.ds, order.tolist()),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            generator=self.generator,
            drop_last=self.drop_last,
            labels_only=not self.masks,
        )
        off = 0
        for batch in loader:
            n = len(batch)
            yield order[off : off + n], batch
            off += n


def _labels_of(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Image labels ``[N, K]`` and their known-mask of a dataset (without decoding if possible)."""
    t = getattr(ds, "targets", None)
    m = getattr(ds, "target_mask", None)
    n = len(ds)  # type: ignore[arg-type]
    if isinstance(t, np.ndarray) and t.ndim == 2 and t.shape[0] == n:
        mask = m if isinstance(m, np.ndarray) and m.shape == t.shape else np.ones_like(t)
        return t.astype(np.float32), mask.astype(np.float32)
    ts, ms = [], []
    for i in range(n):
        s = ds[i]
        ts.append(s.target.numpy())
        ms.append(np.ones_like(ts[-1]) if s.target_mask is None else s.target_mask.numpy())
    return np.stack(ts).astype(np.float32), np.stack(ms).astype(np.float32)


def _random_flip(gen: torch.Generator, *tensors: torch.Tensor | None) -> list[Any]:
    """Flip each item horizontally (last axis) with probability 0.5, the same for all tensors."""
    ref = next(t for t in tensors if t is not None)
    flip = torch.rand(ref.shape[0], generator=gen) < 0.5
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        f = flip.to(t.device).view(-1, *([1] * (t.dim() - 1)))
        out.append(torch.where(f, torch.flip(t, dims=[-1]), t))
    return out


def _poly(optimizer: torch.optim.Optimizer, base: list[float], step: int, total: int) -> None:
    f = (1.0 - min(step, total - 1) / max(1, total)) ** 0.9
    for g, b in zip(optimizer.param_groups, base, strict=True):
        g["lr"] = b * f


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (temp file in the same folder, fsync, rename): never a torn file."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _w)


def _pack(masks: np.ndarray) -> np.ndarray:
    return np.packbits(masks.astype(bool), axis=-1)


def _unpack(packed: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


# ====================================================================== the pipeline


class _Pipeline:
    def __init__(
        self,
        cfg: Any,
        out_dir: Path,
        reporter: Callable[[Any], None] | None,
        datasets: tuple[Dataset, Dataset, Dataset | None] | None = None,
        progress: bool = False,
    ) -> None:
        import torch.distributed as dist
        from lesionsweep.training.runtime import (
            autocast_dtype,
            check_training_split,
            resolve_device,
        )

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise _config_error(
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
        from lesionsweep.training.runtime import prepare_images

        return prepare_images(
            batch.images, self.device, self.cfg.train.in_chans, self.cfg.train.channels_last
        )

    def loader(
        self,
        ds: Dataset,
        indices: Sequence[int],
        *,
        train: bool,
        shuffle: bool = False,
        gen: torch.Generator | None = None,
        masks: bool = False,
    ) -> _IndexedLoader:
        """``(indices, batch)`` pairs over ``ds[indices]``: training (``train.batch_size``, last
        partial batch dropped when there is more than one) or evaluation batches
        (``eval.batch_size``); ``masks`` for batches that need ``batch.masks``."""
        bs = self.cfg.train.batch_size if train else self.cfg.eval.batch_size
        return _IndexedLoader(
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

    def fingerprint(self, stage: int) -> dict[str, Any]:
        return _fingerprint(self.flat, stage)

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
        from lesionsweep.fileio import atomic_write_text
        from lesionsweep.training.evaluate import json_safe

        d = {
            "fingerprint": self.fingerprint(stage),
            "metrics": json_safe(metrics),
            "history": [json_safe(h) for h in history],
            "step": self.step,
        }
        text = json.dumps(d, indent=1, allow_nan=False)
        atomic_write_text(self.out / f"stage{stage}" / "done.json", text)

    def save_model(self, path: Path, model: nn.Module, extra: dict[str, Any] | None = None):
        from lesionsweep.training.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.step,
            "model": model.state_dict(),
            "config": self.cfg.to_dict(),
            **(extra or {}),
        }
        save_checkpoint(path, state)

    def load_model(self, path: Path, model: nn.Module) -> dict[str, Any]:
        from lesionsweep.training.checkpoint import load_checkpoint

        state = load_checkpoint(path, map_location=self.device)
        model.load_state_dict(state["model"])
        return state

    def report(self, stage: int, metrics: Mapping[str, float], ckpt: Path | None) -> None:
        from lesionsweep.fileio import atomic_write_text
        from lesionsweep.training.evaluate import json_safe
        from lesionsweep.training.trainer import EpochReport

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
        best = _best_index(vals, self.cfg.eval.select_mode)
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

    # ------------------------------------------------------------------ main
    def run(self, resume: bool) -> Any:
        from lesionsweep.config import dump_config
        from lesionsweep.data import build_dataset
        from lesionsweep.training import TensorBoardLogger
        from lesionsweep.training.runtime import build_method, seed_everything
        from lesionsweep.training.trainer import TrainResult

        cfg = self.cfg
        seed_everything(cfg.train.seed)
        if self.datasets is not None:
            self.train_ds, self.eval_ds, self.loc_ds = self.datasets
            if self.loc_ds is not None and not self.loc_ds.info.has_masks:
                raise _config_error("the Dice dataset given to run_pipeline has no masks")
        else:
            self.train_ds = build_dataset(cfg.data, "train")
            self.eval_ds = build_dataset(cfg.data, cfg.eval.split)
            self.loc_ds = self._dice_split(build_dataset)
        self.info = self.train_ds.info
        self._check_select_metric()
        model = build_method(cfg, self.info)
        if not isinstance(model, WSMIS):
            raise _config_error(f"method {cfg.method.name!r} is not the wsmis pipeline")
        self.model = model.to(self.device)
        self.s = dict(model.settings)
        self.train_labels, self.train_known = _labels_of(self.train_ds)
        self.pos_idx = np.nonzero((self.train_labels * self.train_known > 0.5).any(1))[0]
        if len(self.pos_idx) == 0:
            raise _data_error(
                f"the train split of {self.info.name!r} has no positive image: the WSMIS "
                "pipeline needs positives to learn CAMs, IRNet and pseudo masks"
            )

        # only now that data, method and metrics are known to build: a bad knob or a missing
        # dataset file leaves no half-written run folder behind (as the ordinary trainer)
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out / "config.yaml")
        rerun = not resume
        try:
            for stage, fn in ((1, self.stage1), (2, self.stage2), (3, self.stage3)):
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
                metrics = fn()
                self.mark_done(stage, metrics, self.stage_history)
        finally:
            if self.tb is not None:
                self.tb.close()
                self.tb = None

        key = cfg.eval.select_metric
        if not self.history:
            raise _training_error(f"{self.out}: no step was recorded")
        b = _best_index([h.get(key, math.nan) for h in self.history], cfg.eval.select_mode)
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
            raise _config_error(
                f"eval.select_metric = {key!r} needs masks, but neither "
                f"eval.split = {self.cfg.eval.split!r} nor a 'val-loc' split of dataset "
                f"{self.train_ds.info.name!r} has them; select on val/auroc_macro instead"
            )
        keys = reported_keys(self.loc_ds is not None)
        if key not in keys:
            raise _config_error(
                f"eval.select_metric = {key!r} is not a reported metric of wsmis; "
                f"choose one of: {', '.join(sorted(keys))}"
            )

    def _dice_split(self, build: Callable[..., Any]) -> Any:
        if self.eval_ds.info.has_masks:
            return self.eval_ds
        from lesionsweep.errors import DataError

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
        from lesionsweep.errors import TrainingError

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

    # ------------------------------------------------------------------ stage 1
    def stage1(self) -> dict[str, float]:
        from lesionsweep.training.optim import LRSchedule, build_optimizer

        cfg, model = self.cfg, self.model
        sd = self.out / "stage1"
        opt = build_optimizer(model, cfg.optim)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        n = len(self.train_ds)
        loader = self.loader(self.train_ds, range(n), train=True, shuffle=True, gen=gen)
        steps = len(loader)
        if cfg.train.max_steps_per_epoch > 0:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        sched = LRSchedule(opt, cfg.optim, cfg.train.epochs, max(1, steps))
        flip_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        metrics: dict[str, float] = {}
        for _epoch in range(cfg.train.epochs):
            model.train()
            tot, cnt = 0.0, 0
            for i, (_, batch) in enumerate(loader):
                if i >= steps:
                    break
                x = self.images(batch)
                y = batch.targets.to(self.device)
                m = batch.target_mask.to(self.device)
                (x,) = _random_flip(flip_gen, x)
                opt.zero_grad(set_to_none=True)
                with self.autocast():
                    out = model(x)
                    loss = model.loss(out, y, m)
                self._check_finite(loss, 1)
                loss.backward()
                if cfg.train.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
                sched.step()
                tot += float(loss.detach())
                cnt += 1
            metrics = {"stage1/loss": tot / max(1, cnt), **self.eval_classifier()}
            sched.end_epoch(metrics.get("stage1/val_loss"))
            self.save_model(sd / "checkpoint" / "model.pt", model)
            self.report(1, metrics, sd / "checkpoint")
        self.save_model(sd / "classifier.pt", model)
        # CAMs of the positive train images (stage 2 input) and of the Dice split
        self.cams, self.cam_index = {}, {}
        cam, _ = self.extract_cams(self.train_ds, self.pos_idx)
        self._store_cams(sd, "train", cam, self.pos_idx)
        if self.loc_ds is not None:
            idx = np.arange(len(self.loc_ds))
            cam, logits = self.extract_cams(self.loc_ds, idx)
            self._store_cams(sd, "loc", cam, idx)
            _save_npy(sd / "logits_loc.npy", logits)
        return metrics

    def _store_cams(self, sd: Path, split: str, cam: np.ndarray, idx: np.ndarray) -> None:
        _save_npy(sd / f"cams_{split}.npy", cam)
        _save_npy(sd / f"cams_{split}_index.npy", np.asarray(idx, dtype=np.int64))
        self.cams[split] = cam
        self.cam_index[split] = np.asarray(idx, dtype=np.int64)

    def _check_finite(self, loss: torch.Tensor, stage: int) -> None:
        if not bool(torch.isfinite(loss.detach())):
            raise _training_error(
                f"wsmis stage {stage}: non-finite training loss {float(loss)}; lower the "
                "stage's learning rate or set train.grad_clip"
            )

    @torch.no_grad()
    def extract_cams(self, ds: Dataset, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised ``cam_kind`` maps (float16 ``[n, K, h, w]``) and logits ``[n, K]``."""
        model = self.model.eval()
        cams, logits = [], []
        for _, batch in self.loader(ds, idx, train=False):
            with self.autocast():
                out = model(self.images(batch))
            cam = model.cams_from_features(out.extras["features"])
            cams.append(cam.cpu().numpy().astype(np.float16))
            logits.append(out.logits.float().cpu().numpy())
        return np.concatenate(cams), np.concatenate(logits)

    @torch.no_grad()
    def eval_classifier(self) -> dict[str, float]:
        """AUROC on ``eval.split`` and gated / oracle CAM Dice on the Dice split."""
        from lesionsweep.metrics import AurocEvaluator, DiceEvaluator

        model = self.model.eval()
        au = AurocEvaluator(self.info.classes)
        loss_sum, n = 0.0, 0
        same = self.loc_ds is self.eval_ds
        dice_gated, dice_oracle = DiceEvaluator(0.5), DiceEvaluator(0.5)
        for _, batch in self.loader(
            self.eval_ds, range(len(self.eval_ds)), train=False, masks=same
        ):
            x = self.images(batch)
            with self.autocast():
                out = model(x)
                loss = model.loss(out, batch.targets.to(self.device),
                                  batch.target_mask.to(self.device))  # fmt: skip
            au.accumulate(out.logits.float(), batch.targets, batch.target_mask)
            loss_sum += float(loss) * len(batch)
            n += len(batch)
            if same:
                self._cam_dice(x, out, batch, dice_gated, dice_oracle)
        if self.loc_ds is not None and not same:
            for _, batch in self.loader(
                self.loc_ds, range(len(self.loc_ds)), train=False, masks=True
            ):
                x = self.images(batch)
                with self.autocast():
                    out_l = model(x)
                self._cam_dice(x, out_l, batch, dice_gated, dice_oracle)
        a = au.compute()
        out = {
            "stage1/auroc": a["auroc_macro"],
            "stage1/val_loss": loss_sum / max(1, n),
            "val/auroc_macro": a["auroc_macro"],
        }
        if self.loc_ds is not None:
            g, o = dice_gated.compute(), dice_oracle.compute()
            out.update(
                {
                    "stage1/cam_dice": g["dice_pooled"],
                    "stage1/cam_dice_per_image": g["dice_per_image"],
                    "stage1/cam_dice_oracle": o["dice_pooled"],
                    "val/dice_pooled": g["dice_pooled"],
                    "val/dice_per_image": g["dice_per_image"],
                }
            )
        return out

    def _cam_dice(self, x: torch.Tensor, out: MethodOutput, batch: Any, gated: Any,
                  oracle: Any) -> None:  # fmt: skip
        size = tuple(x.shape[-2:])
        cams = self.model.cams_from_features(out.extras["features"])
        up = normalize_maps(F.interpolate(cams, size=size, mode="bilinear", align_corners=False))
        fg = up > self.s["cam_threshold"]
        pred_pos = (torch.sigmoid(out.logits.float()) > 0.5)[:, :, None, None]
        true_pos = (batch.targets.to(self.device) > 0.5)[:, :, None, None]
        self._add_dice(gated, fg & pred_pos, batch)
        self._add_dice(oracle, fg & true_pos, batch)

    @staticmethod
    def _add_dice(ev: Any, pred: torch.Tensor, batch: Any) -> None:
        """Add ``pred`` (bool ``[B, K, H, W]``) over the (image, class) pairs with known labels."""
        known = batch.target_mask > 0.5
        if batch.masks is None:
            raise _data_error("the Dice split delivered a batch without masks")
        p = pred.cpu()[known].float()
        g = batch.masks[known]
        if p.shape[0]:
            ev.accumulate(p.numpy(), g.numpy())

    # ------------------------------------------------------------------ stage 2
    def grid_cams(self, split: str, rows: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        c = torch.from_numpy(self.cams[split][rows].astype(np.float32)).to(self.device)
        c = F.interpolate(c, size=grid, mode="bilinear", align_corners=False)
        return normalize_maps(c)

    def build_irnet(self) -> IRNet:
        if self.s["ir_backbone"] == "classifier":
            bb = create_backbone(self.model.backbone_name, self.model.in_chans, False,
                                 output_stride=8)  # fmt: skip
            bb.load_state_dict(self.model.backbone.state_dict())
        else:
            bb = create_backbone(self.model.backbone_name, self.model.in_chans,
                                 self.model.pretrained, output_stride=8)  # fmt: skip
        return IRNet(bb).to(self.device)

    def stage2(self) -> dict[str, float]:
        cfg, s = self.cfg, self.s
        sd = self.out / "stage2"
        size = (self.info.image_size, self.info.image_size)
        grid = grid_size(*size)
        index = PairIndex.build(effective_radius(s["radius"], grid))
        net = self.build_irnet()
        edge_p, dp_p = net.head_parameters()
        lr = s["stage2_lr"]
        opt = torch.optim.SGD(
            [{"params": edge_p, "lr": lr}, {"params": dp_p, "lr": 10 * lr}],
            lr=lr, weight_decay=1e-4,
        )  # fmt: skip
        base = [g["lr"] for g in opt.param_groups]
        gen = torch.Generator().manual_seed(cfg.train.seed + 2)
        flip_gen = torch.Generator().manual_seed(cfg.train.seed + 3)
        loader = self.loader(self.train_ds, self.pos_idx, train=True, shuffle=True, gen=gen)
        steps = len(loader)
        if cfg.train.max_steps_per_epoch > 0:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        total = max(1, steps * s["stage2_epochs"])
        row_of = {int(j): r for r, j in enumerate(self.cam_index["train"])}
        it = 0
        metrics: dict[str, float] = {}
        for _epoch in range(s["stage2_epochs"]):
            net.train()
            sums = np.zeros(5)
            cnt = 0
            for i, (idx, batch) in enumerate(loader):
                if i >= steps:
                    break
                rows = np.array([row_of[int(j)] for j in idx])
                x = self.images(batch)
                cams = self.grid_cams("train", rows, grid)
                labels = ir_labels_from_cams(
                    cams, batch.targets.to(self.device), s["ir_labels"], s["conf_fg"],
                    s["conf_bg"], s["cam_threshold"],
                )  # fmt: skip
                x, labels = _random_flip(flip_gen, x, labels)
                _poly(opt, base, it, total)
                opt.zero_grad(set_to_none=True)
                with self.autocast():
                    edge, disp = net(x)
                terms = affinity_loss(torch.sigmoid(edge.float()), disp.float(), labels, index)
                loss = terms.total
                self._check_finite(loss, 2)
                loss.backward()
                opt.step()
                it += 1
                sums += [float(v.detach()) for v in
                         (loss, terms.pos, terms.neg, terms.dp_fg, terms.dp_bg)]  # fmt: skip
                cnt += 1
            mean = sums / max(1, cnt)
            names = ("stage2/loss", "stage2/pos", "stage2/neg", "stage2/dp_fg", "stage2/dp_bg")
            metrics = dict(zip(names, map(float, mean), strict=True))
            last = _epoch == s["stage2_epochs"] - 1
            if last:
                self._displacement_mean(net)
                self.save_model(sd / "irnet.pt", net)
                metrics.update(self.make_pseudo_masks(net, sd))
            self.save_model(sd / "checkpoint" / "model.pt", net)
            self.report(2, metrics, sd / "checkpoint")
        return metrics

    @torch.no_grad()
    def _displacement_mean(self, net: IRNet) -> None:
        """The reference's ``MeanShift``: mean displacement over the positive train images."""
        net.eval()
        net.dp_mean.zero_()
        acc, n = torch.zeros(2, device=self.device), 0
        for _, batch in self.loader(self.train_ds, self.pos_idx, train=False):
            _, disp = net(self.images(batch))
            acc += disp.float().mean(dim=(2, 3)).sum(0)
            n += len(batch)
        net.dp_mean.copy_(acc / max(1, n))

    @torch.no_grad()
    def propagate(
        self, net: IRNet, x: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Pseudo masks bool ``[B, K, H, W]`` from images, grid CAMs and image labels."""
        s = self.s
        grid = tuple(cams.shape[-2:])
        boundary = net.boundary(x).float()
        rw = random_walk(
            cams, boundary, beta=s["beta"], exp_times=s["exp_times"],
            radius=effective_radius(s["rw_radius"], grid),  # type: ignore[arg-type]
        )  # fmt: skip
        return masks_from_random_walk(rw, labels, s["bg_threshold"], tuple(x.shape[-2:]))

    @torch.no_grad()
    def make_pseudo_masks(self, net: IRNet, sd: Path) -> dict[str, float]:
        from lesionsweep.metrics import DiceEvaluator

        net.eval()
        size = (self.info.image_size, self.info.image_size)
        grid = grid_size(*size)
        row_of = {int(j): r for r, j in enumerate(self.cam_index["train"])}
        packed = []
        for idx, batch in self.loader(self.train_ds, self.pos_idx, train=False):
            rows = np.array([row_of[int(j)] for j in idx])
            x = self.images(batch)
            masks = self.propagate(net, x, self.grid_cams("train", rows, grid),
                                   batch.targets.to(self.device))  # fmt: skip
            packed.append(_pack(masks.cpu().numpy()))
        self.pseudo = np.concatenate(packed)
        self.pseudo_index = np.asarray(self.pos_idx, dtype=np.int64)
        _save_npy(sd / "pseudo_masks_train.npy", self.pseudo)
        _save_npy(sd / "pseudo_masks_train_index.npy", self.pseudo_index)
        out: dict[str, float] = {
            "stage2/pseudo_fg_fraction": float(
                _unpack(self.pseudo, size[1]).mean() if len(self.pseudo) else 0.0
            )
        }
        if self.loc_ds is None:
            return out
        ev = DiceEvaluator(0.5)
        row_loc = {int(j): r for r, j in enumerate(self.cam_index["loc"])}
        for idx, batch in self.loader(
            self.loc_ds, range(len(self.loc_ds)), train=False, masks=True
        ):
            rows = np.array([row_loc[int(j)] for j in idx])
            x = self.images(batch)
            masks = self.propagate(net, x, self.grid_cams("loc", rows, grid),
                                   batch.targets.to(self.device))  # fmt: skip
            self._add_dice(ev, masks, batch)
        d = ev.compute()
        out.update({"stage2/pseudo_dice": d["dice_pooled"],
                    "stage2/pseudo_dice_per_image": d["dice_per_image"]})  # fmt: skip
        return out

    # ------------------------------------------------------------------ stage 3
    def build_unet(self) -> UNet:
        m = self.model
        if self.s["seg_encoder_init"] == "classifier":
            enc = create_backbone(m.backbone_name, m.in_chans, False)
            enc.load_state_dict(m.backbone.state_dict())
        else:
            enc = create_backbone(m.backbone_name, m.in_chans, m.pretrained)
        return UNet(enc, self.info.num_classes).to(self.device)

    def stage3(self) -> dict[str, float]:
        cfg, s = self.cfg, self.s
        sd = self.out / "stage3"
        net = self.build_unet()
        opt = self.stage3_optimizer(net)
        base = [g["lr"] for g in opt.param_groups]
        gen = torch.Generator().manual_seed(cfg.train.seed + 4)
        flip_gen = torch.Generator().manual_seed(cfg.train.seed + 5)
        n = len(self.train_ds)
        loader = self.loader(self.train_ds, range(n), train=True, shuffle=True, gen=gen)
        steps = len(loader)
        if cfg.train.max_steps_per_epoch > 0:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        total = max(1, steps * s["stage3_epochs"])
        row_of = {int(j): r for r, j in enumerate(self.pseudo_index)}
        size = (self.info.image_size, self.info.image_size)
        k = self.info.num_classes
        it = 0
        metrics: dict[str, float] = {}
        for _epoch in range(s["stage3_epochs"]):
            net.train()
            tot, cnt = 0.0, 0
            for i, (idx, batch) in enumerate(loader):
                if i >= steps:
                    break
                tgt = np.zeros((len(idx), k, *size), dtype=bool)
                for b, j in enumerate(idx.tolist()):
                    r = row_of.get(int(j))
                    if r is not None:
                        tgt[b] = _unpack(self.pseudo[r], size[1])
                y = torch.from_numpy(tgt).to(self.device).float()
                known = batch.target_mask.to(self.device)[:, :, None, None]
                x = self.images(batch)
                x, y = _random_flip(flip_gen, x, y)
                _poly(opt, base, it, total)
                opt.zero_grad(set_to_none=True)
                with self.autocast():
                    logits = net(x)
                per = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
                loss = (per * known).sum() / (known.sum() * size[0] * size[1]).clamp_min(1.0)
                self._check_finite(loss, 3)
                loss.backward()
                if cfg.train.grad_clip > 0:
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
                opt.step()
                it += 1
                tot += float(loss.detach())
                cnt += 1
            metrics = {"stage3/loss": tot / max(1, cnt), **self.eval_segmenter(net)}
            self.save_model(sd / "checkpoint" / "model.pt", net)
            self.report(3, metrics, sd / "checkpoint")
        self.save_model(sd / "segmenter.pt", net)
        return metrics

    def stage3_optimizer(self, net: UNet) -> torch.optim.Optimizer:
        """The platform's optimiser (:func:`lesionsweep.training.build_optimizer`: family,
        momentum, weight decay on weights of rank >= 2 only) at ``stage3_lr``, its groups split
        so the encoder runs at a tenth of the decoder's rate (the reference's 1e-4 / 1e-3)."""
        from lesionsweep.training import build_optimizer

        lr = self.s["stage3_lr"]
        opt = build_optimizer(net, dataclasses.replace(self.cfg.optim, lr=lr))
        enc_ids = {id(p) for p in net.encoder.parameters()}
        groups = list(opt.param_groups)
        opt.param_groups.clear()  # no step taken yet: the optimiser holds no state
        for g in groups:
            for in_enc, scale in ((True, 0.1), (False, 1.0)):
                params = [p for p in g["params"] if (id(p) in enc_ids) == in_enc]
                if params:
                    opts = {k: v for k, v in g.items() if k != "params"}
                    opt.add_param_group({**opts, "params": params, "lr": g["lr"] * scale})
        return opt

    @torch.no_grad()
    def eval_segmenter(self, net: UNet) -> dict[str, float]:
        from lesionsweep.metrics import DiceEvaluator

        if self.loc_ds is None:
            return {}
        net.eval()
        ev = DiceEvaluator(0.5)
        for _, batch in self.loader(self.loc_ds, range(len(self.loc_ds)), train=False, masks=True):
            with self.autocast():
                logits = net(self.images(batch))
            self._add_dice(ev, torch.sigmoid(logits.float()) > 0.5, batch)
        d = ev.compute()
        return {"val/dice_pooled": d["dice_pooled"], "val/dice_per_image": d["dice_per_image"],
                "stage3/dice_pooled": d["dice_pooled"]}  # fmt: skip


# ====================================================================== small helpers


def _fingerprint(flat: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """The config values stages ``1..stage`` depend on (flat keys), in the JSON form stored in
    ``done.json`` (lists for tuples, ``None`` for non-finite floats), so it compares equal to
    what is read back."""
    from lesionsweep.training.evaluate import json_safe

    keys = [k for k in flat if not k.startswith(("method.", "eval.")) and k not in _VOLATILE] + [
        "eval.split"
    ]
    for s in range(1, stage + 1):
        keys += [f"method.{k}" for k in _STAGE_KNOBS[s]]
    values = json_safe({k: flat.get(k) for k in sorted(set(keys))})
    return json.loads(json.dumps(values, default=str, allow_nan=False))


def _check_stage3_current(run: Path) -> None:
    """Refuse a run folder whose stage 3 is unfinished or stale against its ``config.yaml``."""
    from lesionsweep.config import load_config

    done = run / "stage3" / "done.json"
    try:
        d = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        raise _config_error(
            f"evaluate: {run}: stage 3 is not finished (stage3/done.json missing or unreadable); "
            "run or resume the pipeline first"
        ) from None
    stored = load_config(run / "config.yaml")
    if d.get("fingerprint") != _fingerprint(stored.to_flat(), 3):
        raise _config_error(
            f"evaluate: {run}: stage3/segmenter.pt was trained with another config than "
            f"{run / 'config.yaml'} (a re-run with changed knobs did not finish); resume the "
            "pipeline first"
        )


def _best_index(values: Sequence[float], mode: str) -> int:
    best, bi = None, len(values) - 1
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        if best is None or (v > best if mode == "max" else v < best):
            best, bi = v, i
    return bi


def _config_error(msg: str) -> Exception:
    from lesionsweep.errors import ConfigError

    return ConfigError(msg)


def _data_error(msg: str) -> Exception:
    from lesionsweep.errors import DataError

    return DataError(msg)


def _training_error(msg: str) -> Exception:
    from lesionsweep.errors import TrainingError

    return TrainingError(msg)
