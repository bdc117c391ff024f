"""Multiscale CAM with learned layer relevance weights (Sedai et al., MLMI 2018).

No official code exists; this follows the reading of the abstract in methods.md section 5.1:

* per chosen backbone stage s, a stage-specific 1x1 conv gives a class map
  ``A_s = conv_s(F_s)``, ``[B, K, h_s, w_s]`` (logits);
* per class c, layer relevance weights ``alpha_{c,s} = softmax_s(beta_{c,s} / temperature)``
  (convex: ``alpha >= 0`` and ``sum_s alpha_{c,s} = 1``); ``beta`` starts at zeros (uniform
  alpha) except that ``relevance_init_deep`` is added to the deepest stage's beta;
* image logit ``y_c = sum_s alpha_{c,s} * pool(A_{c,s})`` with GAP by default (then it equals
  classifying the alpha-mix of the stage-pooled features); any pooling of
  :mod:`lesionsweep.methods.pooling` can be chosen (one pooling instance per stage), on the class
  map (``pool_on="map"``) or on the features before the stage's classifier (``"features"``);
* map ``M_c = sum_s alpha_{c,s} * upsample(A_{c,s})``, bilinear (``align_corners=False``) to the
  finest chosen stage's resolution (the largest ``h_s x w_s``); ``map_kind = "logits"``.

Stages are timm ``out_indices`` (0-based over the model's ``feature_info``; negatives count from
the deepest). For ResNets, DenseNets and EfficientNets index i has stride ``2**(i+1)``, so the
default ``(2, 3, 4)`` is strides 8, 16, 32 (ResNet layer2, layer3, layer4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lesionsweep.errors import ConfigError
from torch import nn

from .base import Method, MethodOutput, register_method
from .cam import build_backbone, build_pooling, check_input, make_classifier
from .pooling import PoolingName, pool_logits

__all__ = ["MultiscaleCAM", "parse_stages"]


def parse_stages(stages: Sequence[int] | str) -> tuple[int, ...]:
    """Stages as a tuple of ints; a string ``"2,3,4"`` is accepted (search spaces use it)."""
    if isinstance(stages, str):
        parts = [p for p in stages.replace(" ", "").split(",") if p]
        try:
            out = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"multiscale_cam stages {stages!r}: expected comma-separated ints such as '2,3,4'"
            ) from None
    else:
        out = tuple(int(s) for s in stages)
    if not out:
        raise ConfigError("multiscale_cam stages must name at least one stage, got none")
    if len(set(out)) != len(out):
        raise ConfigError(f"multiscale_cam stages must be distinct, got {list(out)}")
    return out


@register_method("multiscale_cam")
class MultiscaleCAM(Method):
    """Per-stage CAMs mixed by per-class softmax layer-relevance weights.

    Args:
        num_classes: K.
        criterion: classification loss on the image logits (default BCE).
        backbone: any timm CNN name with ``features_only`` support.
        pretrained: False, True (local cache only) or a local weights file.
        in_chans: image channels (1 or 3).
        stages: timm ``out_indices`` of the stages to mix (see module docstring), a sequence of
            ints or a comma-separated string.
        temperature: softmax temperature on beta (> 0).
        relevance_init_deep: initial beta of the deepest chosen stage (0 = uniform alpha).
        output_stride: timm ``output_stride`` (ResNets), None for native.
        pooling, pool_on, lse_r, wildcat_kmax, wildcat_kmin, wildcat_alpha, wildcat_halve, fc_bn,
            fc_drop: the per-stage pooling, its order and its knobs, as in
            :class:`~lesionsweep.methods.cam.CAM`.

    Output: logits ``[B, K]``; maps ``[B, K, h, w]`` at the finest stage's resolution; extras
    ``alpha`` ``[K, S]`` (relevance weights, rows sum to 1, in the order of ``stages`` as given
    by the backbone, shallow to deep) and ``stage_logits`` ``[B, K, S]`` (pooled per-stage logits).
    """

    map_kind: ClassVar[str] = "logits"
    #: at 96-256 px the stride-32 stage leaves 3x3-8x8 cells: mix strides 8 and 16, LSE
    small_scale_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"stages": "2,3", "pooling": "lse"}
    )

    def __init__(
        self,
        num_classes: int,
        criterion: nn.Module | None = None,
        backbone: str = "resnet18",
        pretrained: bool | str = False,
        in_chans: int = 1,
        stages: Sequence[int] | str = (2, 3, 4),
        temperature: float = 1.0,
        relevance_init_deep: float = 0.0,
        output_stride: int | None = None,
        pooling: PoolingName = "gap",
        pool_on: Literal["map", "features"] = "map",
        lse_r: float | None = None,
        wildcat_kmax: float | None = None,
        wildcat_kmin: float | None = None,
        wildcat_alpha: float | None = None,
        wildcat_halve: bool | None = None,
        fc_bn: bool | None = None,
        fc_drop: float | None = None,
    ) -> None:
        super().__init__(num_classes, criterion)
        if not temperature > 0:
            raise ConfigError(f"multiscale_cam temperature must be > 0, got {temperature!r}")
        self.in_chans = in_chans
        self.stages = parse_stages(stages)
        self.temperature = temperature
        self.pool_on = pool_on
        self.backbone = build_backbone(
            backbone, self.in_chans, pretrained, self.stages, output_stride, "multiscale_cam"
        )
        chans = self.backbone.channels  # timm returns the stages shallow to deep
        self.classifiers = nn.ModuleList(make_classifier(c, self.num_classes) for c in chans)
        self.pools = nn.ModuleList(
            build_pooling(
                pooling,
                lse_r=lse_r,
                wildcat_kmax=wildcat_kmax,
                wildcat_kmin=wildcat_kmin,
                wildcat_alpha=wildcat_alpha,
                wildcat_halve=wildcat_halve,
                fc_bn=fc_bn,
                fc_drop=fc_drop,
                num_features=c,
                num_classes=self.num_classes,
                pool_on=pool_on,
            )
            for c in chans
        )
        beta = torch.zeros(self.num_classes, len(chans))
        beta[:, -1] = relevance_init_deep
        self.beta = nn.Parameter(beta)

    def relevance(self) -> torch.Tensor:
        """Layer relevance weights alpha ``[K, S]`` (each row sums to 1)."""
        return torch.softmax(self.beta / self.temperature, dim=1)

    def forward(self, x: torch.Tensor) -> MethodOutput:
        check_input(x, self.in_chans, "multiscale_cam")
        feats = self.backbone(x)
        cams = [conv(f) for conv, f in zip(self.classifiers, feats, strict=True)]
        pooled = torch.stack(
            [
                pool_logits(self.pools[s], self.pool_on, feats[s], cams[s], self.classifiers[s])
                for s in range(len(cams))
            ],
            dim=2,
        )  # [B, K, S]
        alpha = self.relevance()  # [K, S]
        logits = (pooled * alpha[None]).sum(dim=2)
        size = max((c.shape[-2:] for c in cams), key=lambda s: s[0] * s[1])
        maps = torch.zeros(
            (x.shape[0], self.num_classes, *size), dtype=cams[0].dtype, device=x.device
        )
        for s, cam in enumerate(cams):
            if cam.shape[-2:] != size:
                cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
            maps = maps + alpha[None, :, s, None, None] * cam
        return MethodOutput(
            logits=logits, maps=maps, extras={"alpha": alpha, "stage_logits": pooled}
        )
