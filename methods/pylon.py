"""PYLON: pyramid localization network (Preechakul et al., arXiv 2010.11475 / ICASSP 2021,
extended in iScience 2022; code ``cmb-chula/pylon``).

A timm CNN encoder gives four feature stages at strides 4, 8, 16 and 32 (``l1`` … ``l4``). The
decoder is

* **PA** (pyramid attention) on ``l4``: ``mid = CBR1(C4 → n_dec_ch)(l4)``; a 7/5/3 pyramid of
  single-channel CBRs on max-pooled copies (``x1 = CBR7(maxpool2(l4))``,
  ``x2 = CBR5(maxpool2(x1))``, ``x3 = CBR3(maxpool2(x2))``) is folded back with bilinear ×2
  upsampling (``align_corners=True``):
  ``a = up(CBR3(x3)); a = up(CBR5(x2) + a); a = up(CBR7(x1) + a)`` and ``d = a · mid``.
  With ``use_pa=False``, ``d = mid``.
* ``n_up`` **UP** modules towards stride 4: ``d = resize(d → skip size, bilinear,
  align_corners=True) + Conv(skip)`` with ``Conv = CBR(C → n_dec_ch)`` for ``up_type='1layer'``
  (arXiv/ICASSP code) or ``CBR(C → C) → CBR(C → n_dec_ch)`` for ``'2layer'`` (iScience code, the
  default); the CBR kernel is ``up_kernel_size``.
* a segmentation head ``Conv2d(n_dec_ch → K, seg_kern_size)`` giving class logits at stride 4, and
  global **max** pooling over them for the image logits.

``CBR(k)`` is ``Conv2d(k×k, padding k//2, bias=True) → BatchNorm2d → ReLU``. Decoder convolutions
are kaiming-uniform (fan-in, ReLU) with zero bias, BN weights 1 / biases 0, the head is
xavier-uniform with zero bias (segmentation_models_pytorch ``initialize``), as in the authors' code.

The pyramid halves the last stage three times and doubles it back, so its side must be divisible
by 8: with the usual stride-32 layout the input sides must be multiples of 256 (224 px is
refused, not silently cropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lesionsweep.errors import ConfigError
from torch import nn

from .backbones import create_backbone
from .base import Method, MethodOutput, register_method

__all__ = ["Pylon", "PyramidAttention", "UpModule", "ConvBnRelu"]

_STRIDES = (4, 8, 16, 32)


class ConvBnRelu(nn.Sequential):
    """``Conv2d(k×k, stride 1, padding k//2, bias=True) → BatchNorm2d → ReLU``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class PyramidAttention(nn.Module):
    """PYLON's pyramid attention on the deepest feature map.

    Input ``[B, C, h, w]`` with ``h`` and ``w`` divisible by 8 (when ``use_pa``); output
    ``[B, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, use_pa: bool = True) -> None:
        super().__init__()
        self.use_pa = use_pa
        self.mid = ConvBnRelu(in_channels, out_channels, 1)
        if self.use_pa:
            self.down1 = ConvBnRelu(in_channels, 1, 7)
            self.down2 = ConvBnRelu(1, 1, 5)
            self.down3 = ConvBnRelu(1, 1, 3)
            self.conv3 = ConvBnRelu(1, 1, 3)
            self.conv2 = ConvBnRelu(1, 1, 5)
            self.conv1 = ConvBnRelu(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.mid(x)
        if not self.use_pa:
            return mid
        x1 = self.down1(F.max_pool2d(x, 2))
        x2 = self.down2(F.max_pool2d(x1, 2))
        x3 = self.down3(F.max_pool2d(x2, 2))
        a = _up2(self.conv3(x3))
        a = _up2(self.conv2(x2) + a)
        a = _up2(self.conv1(x1) + a)
        return a * mid


class UpModule(nn.Module):
    """PYLON's UP module: ``resize(deep → skip size) + Conv(skip)``.

    Args:
        in_channels: channels of the skip feature map.
        out_channels: decoder channels (``n_dec_ch``).
        up_type: ``'1layer'`` (one CBR, arXiv code) or ``'2layer'`` (CBR C→C then C→out).
        kernel_size: CBR kernel size (odd).
    """

    def __init__(
        self, in_channels: int, out_channels: int, up_type: str = "2layer", kernel_size: int = 1
    ) -> None:
        super().__init__()
        if up_type == "1layer":
            self.conv: nn.Module = ConvBnRelu(in_channels, out_channels, kernel_size)
        elif up_type == "2layer":
            self.conv = nn.Sequential(
                ConvBnRelu(in_channels, in_channels, kernel_size),
                ConvBnRelu(in_channels, out_channels, kernel_size),
            )
        else:
            raise ConfigError(f"PYLON up_type must be '1layer' or '2layer', got {up_type!r}")

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return up + self.conv(skip)


def _check_odd(name: str, k: int) -> int:
    if k < 1 or k % 2 == 0:
        raise ConfigError(f"PYLON {name} must be a positive odd integer, got {k}")
    return k


@register_method("pylon")
class Pylon(Method):
    """PYLON (see the module docstring for the architecture).

    Args:
        num_classes: number of classes K.
        criterion: image-level classification loss (default BCE, as in the paper).
        backbone: any timm CNN with feature stages at strides 4, 8, 16 and 32 (``resnet50`` in
            the paper).
        pretrained: ImageNet weights from the local cache (``True``) or a weights file path.
        in_chans: input channels (1 in the paper; timm sums RGB first-conv weights like smp).
        n_dec_ch: decoder channels.
        n_up: number of UP modules (0–3); 3 brings the map to stride 4.
        up_type: ``'2layer'`` (iScience default) or ``'1layer'`` (arXiv/ICASSP code).
        up_kernel_size: kernel of the UP modules' CBRs (odd).
        seg_kern_size: kernel of the segmentation head (odd).
        use_pa: use the pyramid attention (else ``d = mid``).

    ``forward(x)`` takes float images ``[B, in_chans, H, W]`` (H, W multiples of 256 when
    ``use_pa``) and returns logits ``[B, K]`` (global max of the maps) and maps ``[B, K, H/4, W/4]``
    (class logits; ``H/32 · 2**n_up`` in general), both float32.
    """

    map_kind: ClassVar[str] = "logits"
    input_multiple: ClassVar[int] = 256
    #: the default resnet50 is too slow for a short CPU run at 256 px
    small_scale_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType({"backbone": "test_resnet"})

    def __init__(
        self,
        num_classes: int,
        criterion: nn.Module | None = None,
        backbone: str = "resnet50",
        pretrained: bool | str = False,
        in_chans: int = 1,
        n_dec_ch: int = 128,
        n_up: int = 3,
        up_type: Literal["2layer", "1layer"] = "2layer",
        up_kernel_size: int = 1,
        seg_kern_size: int = 1,
        use_pa: bool = True,
    ) -> None:
        super().__init__(num_classes, criterion)
        if n_dec_ch < 1:
            raise ConfigError(f"PYLON n_dec_ch must be >= 1, got {n_dec_ch}")
        if n_up not in (0, 1, 2, 3):
            raise ConfigError(f"PYLON n_up must be 0, 1, 2 or 3, got {n_up}")
        if up_type not in ("1layer", "2layer"):
            raise ConfigError(f"PYLON up_type must be '1layer' or '2layer', got {up_type!r}")
        up_kernel_size = _check_odd("up_kernel_size", up_kernel_size)
        seg_kern_size = _check_odd("seg_kern_size", seg_kern_size)
        self.n_up = n_up
        self.in_chans = in_chans
        self.use_pa = use_pa

        self.encoder = create_backbone(backbone, in_chans=in_chans, pretrained=pretrained)
        red = self.encoder.reductions
        # the last feature map at each of the strides 4, 8, 16, 32
        picks = []
        for s in _STRIDES:
            idx = [i for i, r in enumerate(red) if r == s]
            if not idx:
                raise ConfigError(
                    f"PYLON needs a backbone with four feature stages at strides 4, 8, 16 and 32; "
                    f"timm model {backbone!r} has feature strides {red}"
                )
            picks.append(idx[-1])
        self._picks = picks
        ch = [self.encoder.channels[i] for i in picks]
        self.last_stride = _STRIDES[-1]

        self.pa = PyramidAttention(ch[3], n_dec_ch, use_pa=self.use_pa)
        ups = [UpModule(ch[i], n_dec_ch, up_type, up_kernel_size) for i in (2, 1, 0)]
        self.ups = nn.ModuleList(ups[: self.n_up])
        self.head = nn.Conv2d(
            n_dec_ch, self.num_classes, seg_kern_size, padding=seg_kern_size // 2, bias=True
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in [*self.pa.modules(), *self.ups.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check_size(self, h: int, w: int, l4: torch.Tensor | None = None) -> None:
        mult = 8 * self.last_stride
        bad = (h % mult or w % mult) if l4 is None else (l4.shape[-2] % 8 or l4.shape[-1] % 8)
        if bad:
            raise ConfigError(
                f"PYLON's pyramid attention halves the last feature stage three times, so its side "
                f"must be divisible by 8: input sides must be a multiple of {mult} with the "
                f"standard stride-{self.last_stride} layout (e.g. 256 or 512); got input {h}x{w} "
                f"(data.image_size)"
                + ("" if l4 is None else f" with a {l4.shape[-2]}x{l4.shape[-1]} last stage")
                + " (use_pa=False lifts this rule)"
            )

    def forward(self, x: torch.Tensor) -> MethodOutput:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"pylon: expected images [B, {self.in_chans}, H, W] (in_chans={self.in_chans}), "
                f"got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if self.use_pa:
            self._check_size(h, w)
        feats = self.encoder(x)
        l1, l2, l3, l4 = (feats[i] for i in self._picks)
        if self.use_pa:
            self._check_size(h, w, l4)
            if self.training and x.shape[0] * (l4.shape[-2] // 8) * (l4.shape[-1] // 8) == 1:
                raise ValueError(
                    f"PYLON's pyramid attention reduces a {l4.shape[-2]}x{l4.shape[-1]} last stage "
                    f"to 1x1 before a BatchNorm, which needs more than one value in training: a "
                    f"training batch at {h}x{w} input needs >= 2 images (drop the last incomplete "
                    f"batch or use a larger input)"
                )
        d = self.pa(l4)
        for up, skip in zip(self.ups, (l3, l2, l1)[: self.n_up], strict=True):
            d = up(skip, d)
        seg = self.head(d).float()
        logits = F.adaptive_max_pool2d(seg, 1).flatten(1)
        return MethodOutput(logits=logits, maps=seg)
