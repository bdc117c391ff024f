"""A compact U-Net over any timm ``features_only`` encoder (stage 3, the segmentation network).

The reference uses ``segmentation_models_pytorch.Unet(resnet50)``; this is the same shape without
the dependency: the deepest encoder feature is upsampled (nearest, x2 or to the next skip's size),
concatenated with the next shallower skip, and passed through two 3x3 conv + BatchNorm + ReLU
blocks; after the shallowest skip one more decoder block brings the map to the input resolution
and a 1x1 conv gives ``K`` mask logits ``[B, K, H, W]``. Decoder widths are
``(256, 128, 64, 32, 16)`` taken from the end (one per skip plus the final block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone

__all__ = ["UNet"]

_WIDTHS = (256, 128, 64, 32, 16)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Block(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c_in + c_skip, c_out), _conv(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]):
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.body(x)


class UNet(nn.Module):
    """U-Net decoder over a :class:`Backbone` encoder.

    Args:
        encoder: timm features_only backbone (standard output stride).
        num_classes: mask channels ``K``.
    """

    def __init__(self, encoder: Backbone, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        chans = list(encoder.channels)
        n_skips = len(chans) - 1
        widths = list(_WIDTHS[-(n_skips + 1) :]) if n_skips + 1 <= len(_WIDTHS) else None
        if widths is None:
            widths = [max(16, 256 >> i) for i in range(n_skips + 1)]
        blocks = []
        c_prev = chans[-1]
        for i in range(n_skips):
            c_skip = chans[-2 - i]
            blocks.append(_Block(c_prev, c_skip, widths[i]))
            c_prev = widths[i]
        blocks.append(_Block(c_prev, 0, widths[-1]))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> mask logits ``[B, K, H, W]``."""
        feats = self.encoder(x)
        y = feats[-1]
        skips = feats[:-1][::-1]
        for blk, skip in zip(self.blocks[:-1], skips, strict=True):
            y = blk(y, skip, tuple(skip.shape[-2:]))
        y = self.blocks[-1](y, None, tuple(x.shape[-2:]))
        return self.head(y)
