"""Viniavskyi et al. 2020 (methods.md section 4): the stage-1 classifier of CAM -> IRNet -> U-Net.

The registered method ``wsmis`` is the stage-1 classifier (its ``forward`` follows the platform
contract: image logits ``[B, K]`` and CAMs ``[B, K, h, w]`` at 1/8 of the input): a timm backbone
with output stride 8 and one :class:`~.dropblock.DropBlock2D` after each of the last two stages
(the same instance, as the authors' ``resnet50_dropblock``), global average pooling and a linear
head. Every pipeline knob (IRNet, random walk, U-Net) is a constructor kwarg, so a search space
reaches all of them. The class declares ``runner = "wsmis"``: the training layer
(:mod:`lesionsweep.training.wsmis`) runs its three stages; this package holds only the networks
(:mod:`.irnet`, :mod:`.unet`), the CAMs (:mod:`.cams`) and the affinity / random-walk maths
(:mod:`.affinity`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..backbones import create_backbone
from ..base import Method, MethodOutput, register_method
from .cams import CAM_KINDS, class_maps, normalize_maps
from .dropblock import DropBlock2D, LinearWarmup

__all__ = ["WSMIS", "effective_radius", "IR_LABEL_MODES", "INIT_CHOICES"]

IR_LABEL_MODES = ("confident", "raw")
INIT_CHOICES = ("classifier", "pretrained")


def effective_radius(radius: int, grid: tuple[int, int]) -> int:
    """Radius used on a grid: ``max(2, round(radius * min(grid) / 128))``.

    Radii are given for the reference's 128-pixel grid (a 512-px input); scaling them with the
    grid keeps the pairs and the random walk's reach the same fraction of the image.
    """
    return int(max(2, math.floor(radius * min(grid) / 128 + 0.5)))


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
    dropblock_step: torch.Tensor
    #: the training layer's staged runner (CAM -> IRNet -> U-Net) trains this method
    runner = "wsmis"

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
        for key, choice in (("ir_backbone", ir_backbone), ("seg_encoder_init", seg_encoder_init)):
            _check(choice in INIT_CHOICES, f"{key}={choice!r}; allowed: {', '.join(INIT_CHOICES)}")
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
        for key, epochs in (("stage2_epochs", stage2_epochs), ("stage3_epochs", stage3_epochs)):
            _check(int(epochs) >= 1, f"{key}={epochs!r} must be >= 1")
        for key, lr in (("stage2_lr", stage2_lr), ("stage3_lr", stage3_lr)):
            _check(float(lr) > 0, f"{key}={lr!r} must be > 0")

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
