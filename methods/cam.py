"""CAM with a choice of global pooling (GAP, GMP, LSE, PCAM, WILDCAT) on any timm CNN.

The head is one 1x1 conv classifier on one backbone stage: ``S = conv1x1(F)`` is the class logit
map ``[B, K, h, w]`` (the CAM, computed before pooling), and the pooling (see
:mod:`lesionsweep.methods.pooling`) turns it into image logits ``[B, K]``. With
``pooling="pcam"`` this is Ye et al. 2020's Probabilistic-CAM (methods.md section 2.1): the same
1x1 conv classifies the sigmoid(S)-weighted feature average, so with ``fc_bn=False`` and
``fc_drop=0`` the image logit is ``sum_hw (sigmoid(S)/sum_hw sigmoid(S)) * S``.

Maps: ``MethodOutput.maps`` is the class logit map S at the backbone stage's resolution
(``h = ceil(H / r)`` with r the stage's reduction, e.g. 32 for the last ResNet/DenseNet stage,
8 or 16 with ``output_stride``); ``map_kind = "logits"``. PCAM's paper/repo heatmap is
``sigmoid(S)`` (a monotone transform, so per-pixel rankings are identical; thresholds on
min-max-normalised maps are not).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from lesionsweep.errors import ConfigError
from torch import nn

from .backbones import Backbone, create_backbone, stage_count
from .base import Method, MethodOutput, register_method
from .pooling import POOL_ON, Pooling, PoolingName, create_pooling, pool_logits, pooling_names

__all__ = ["CAM", "build_backbone", "build_pooling", "make_classifier", "check_input"]


def build_backbone(
    name: str,
    in_chans: int,
    pretrained: bool | str,
    out_indices: tuple[int, ...],
    output_stride: int | None,
    method: str,
) -> Backbone:
    """:func:`create_backbone` with :class:`ConfigError` for a bad stage index or output_stride."""
    try:
        return create_backbone(
            name,
            in_chans=in_chans,
            pretrained=pretrained,
            out_indices=out_indices,
            output_stride=output_stride,
        )
    except IndexError:
        n = stage_count(name)
        raise ConfigError(
            f"{method}: stage index(es) {list(out_indices)} out of range for backbone {name!r}, "
            f"which has {n} feature stages (timm out_indices 0..{n - 1}, or -{n}..-1)"
        ) from None
    except TypeError as e:
        if output_stride is not None and "output_stride" in str(e):
            raise ConfigError(
                f"{method}: backbone {name!r} does not support output_stride={output_stride} "
                f"(use None, or a ResNet-family backbone)"
            ) from None
        raise


def make_classifier(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1x1 conv ``C -> K`` initialised as PCAM's ``_init_classifier``: weight N(0, 0.01), bias 0."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def build_pooling(
    pooling: str,
    *,
    lse_r: float | None,
    wildcat_kmax: float | None,
    wildcat_kmin: float | None,
    wildcat_alpha: float | None,
    fc_bn: bool | None,
    fc_drop: float | None,
    num_features: int,
    num_classes: int,
    wildcat_halve: bool | None,
    pool_on: str,
) -> Pooling:
    """Map a method's flat pooling knobs to a pooling module.

    ``lse_r`` is used only by ``lse``, ``wildcat_*`` only by ``wildcat``; ``fc_bn``/``fc_drop``
    act on PCAM's pooled feature vector and raise :class:`ConfigError` with any other pooling.
    A knob left at ``None`` takes the pooling constructor's default (defaults live there only).
    ``pool_on`` (checked here, applied by :func:`~lesionsweep.methods.pooling.pool_logits`) is
    ``"map"`` or ``"features"``; PCAM has the first only.
    """
    if pooling not in pooling_names():
        raise ConfigError(f"unknown pooling {pooling!r}; allowed: {', '.join(pooling_names())}")
    if pool_on not in POOL_ON:
        raise ConfigError(f"pool_on must be one of {', '.join(POOL_ON)}; got {pool_on!r}")
    if pooling == "pcam" and pool_on != "map":
        raise ConfigError(
            "pool_on='features' needs pooling gap, gmp, lse or wildcat; PCAM already pools the "
            "features with its own weights (use pool_on='map' with pooling='pcam')"
        )
    if pooling != "pcam" and (fc_bn or fc_drop):
        raise ConfigError(
            f"fc_bn / fc_drop act on PCAM's pooled feature vector and need pooling='pcam', "
            f"got pooling={pooling!r} with fc_bn={fc_bn!r}, fc_drop={fc_drop!r}"
        )
    kwargs: dict[str, Any] = {}
    if pooling == "lse":
        kwargs = {"r": lse_r}
    elif pooling == "wildcat":
        kwargs = {
            "kmax": wildcat_kmax,
            "kmin": wildcat_kmin,
            "alpha": wildcat_alpha,
            "halve": wildcat_halve,
        }
    elif pooling == "pcam":
        kwargs = {
            "fc_bn": fc_bn,
            "fc_drop": fc_drop,
            "num_features": num_features,
            "num_classes": num_classes,
        }
    return create_pooling(pooling, **{k: v for k, v in kwargs.items() if v is not None})


def check_input(x: torch.Tensor, in_chans: int, method: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, in_chans, H, W]``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"{method}: expected images [B, {in_chans}, H, W] (in_chans={in_chans}), "
            f"got shape {tuple(x.shape)}"
        )


@register_method("cam")
class CAM(Method):
    """Backbone stage -> 1x1 conv class logit map S -> pooling -> image logits.

    Args:
        num_classes: K.
        criterion: classification loss on the image logits (default BCE).
        backbone: any timm CNN name with ``features_only`` support.
        pretrained: False, True (local cache only) or a local weights file.
        in_chans: image channels (1 for grayscale X-rays, 3 for RGB).
        feature_index: which timm feature stage feeds the head (timm ``out_indices`` numbering,
            0-based over ``feature_info``; -1 = the deepest).
        output_stride: timm ``output_stride`` (8/16) for a larger map on models that support
            dilation (ResNets); None keeps the model's native stride.
        pooling: one of gap, gmp, lse, pcam, wildcat.
        pool_on: ``"map"`` pools the class logit map S (image logit ``pool(S)``); ``"features"``
            pools the feature map F and then classifies (``W pool(F) + b``), the order of Wang et
            al.'s LSE network and of the PCAM repository's LSE/MAX poolings (see
            :mod:`lesionsweep.methods.pooling`). Equal for gap; pcam has "map" only. The maps
            are S either way.
        lse_r: LSE sharpness r (pooling="lse"); None: the pooling's own default.
        wildcat_kmax, wildcat_kmin, wildcat_alpha: WILDCAT knobs (pooling="wildcat").
        wildcat_halve: WILDCAT as Durand's code, ``(top + alpha * bottom) / 2`` when the bottom
            term is active; False is the paper's sum.
        fc_bn, fc_drop: batch-norm / dropout on PCAM's pooled feature vector (pooling="pcam").

    Output: logits ``[B, K]``; maps = S ``[B, K, h, w]`` (logits); extras empty.
    """

    map_kind: ClassVar[str] = "logits"
    #: at 96-256 px the deepest stage leaves 3x3-8x8 cells: classify the stride-16 stage, LSE
    small_scale_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"feature_index": -2, "pooling": "lse"}
    )

    def __init__(
        self,
        num_classes: int,
        criterion: nn.Module | None = None,
        backbone: str = "resnet18",
        pretrained: bool | str = False,
        in_chans: int = 1,
        feature_index: int = -1,
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
        self.in_chans = int(in_chans)
        self.pool_on = pool_on
        self.backbone = build_backbone(
            backbone, self.in_chans, pretrained, (int(feature_index),), output_stride, "cam"
        )
        channels = self.backbone.channels[-1]
        self.classifier = make_classifier(channels, self.num_classes)
        self.pooling_name = pooling
        self.pool = build_pooling(
            pooling,
            lse_r=lse_r,
            wildcat_kmax=wildcat_kmax,
            wildcat_kmin=wildcat_kmin,
            wildcat_alpha=wildcat_alpha,
            wildcat_halve=wildcat_halve,
            fc_bn=fc_bn,
            fc_drop=fc_drop,
            num_features=channels,
            num_classes=self.num_classes,
            pool_on=pool_on,
        )

    def forward(self, x: torch.Tensor) -> MethodOutput:
        check_input(x, self.in_chans, "cam")
        feats = self.backbone(x)[-1]  # [B, C, h, w]
        logit_map = self.classifier(feats)  # [B, K, h, w]
        logits = pool_logits(self.pool, self.pool_on, feats, logit_map, self.classifier)
        return MethodOutput(logits=logits, maps=logit_map, extras={})
