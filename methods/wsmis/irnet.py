"""IRNet (Ahn, Cho, Kwak 2019): a frozen backbone with a class-boundary and a displacement branch.

Both branches read every feature level of a timm ``features_only`` backbone whose parameters are
frozen and whose outputs are detached (the reference ``resnet50_irn.py`` detaches every stage).
All branch outputs live on the *grid*: 1/4 of the input (``ceil(H / 4) x ceil(W / 4)``), the
resolution of the pair construction in :mod:`.affinity`.

* Boundary branch: per level a 1x1 conv to 32 channels + GroupNorm(4) + ReLU, resized to the grid
  (bilinear up, area down), concatenated, and a 1x1 conv to one logit per grid pixel. The
  boundary probability is its sigmoid.
* Displacement branch (simplified from the reference's two-level decoder): per level a 1x1 conv to
  64 channels + GroupNorm(8) + ReLU, resized to the grid, concatenated, 1x1 conv to 128 + GroupNorm
  + ReLU, 1x1 conv to 2 channels (rows, columns in grid pixels). A running mean (the reference's
  ``MeanShift``) is estimated after training and subtracted at inference.

The backbone stays in eval mode (its BatchNorm statistics are not updated) whatever ``train()``
is called with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone

__all__ = ["IRNet", "grid_size"]


def grid_size(h: int, w: int) -> tuple[int, int]:
    """IRNet grid of an ``h x w`` image: ``(ceil(h / 4), ceil(w / 4))``."""
    return (h + 3) // 4, (w + 3) // 4


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _branch(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True)
    )


class IRNet(nn.Module):
    """Boundary + displacement heads over a frozen backbone.

    Args:
        backbone: a :class:`~lesionsweep.methods.backbones.Backbone` (frozen here).
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        chans = backbone.channels
        self.edge_sides = nn.ModuleList([_branch(c, 32, 4) for c in chans])
        self.edge_out = nn.Conv2d(32 * len(chans), 1, 1, bias=True)
        self.dp_sides = nn.ModuleList([_branch(c, 64, 8) for c in chans])
        self.dp_mid = _branch(64 * len(chans), 128, 16)
        self.dp_out = nn.Conv2d(128, 2, 1, bias=False)
        self.register_buffer("dp_mean", torch.zeros(2))

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def head_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable parameters: ``(boundary branch, displacement branch)``."""
        edge = [*self.edge_sides.parameters(), *self.edge_out.parameters()]
        dp = [*self.dp_sides.parameters(), *self.dp_mid.parameters(), *self.dp_out.parameters()]
        return edge, dp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, C, H, W]`` -> (boundary logits ``[B, h, w]``, displacement ``[B, 2, h, w]``)

        ``h, w`` is :func:`grid_size` of ``H, W``. The displacement has ``dp_mean`` removed in
        eval mode only.
        """
        size = grid_size(x.shape[-2], x.shape[-1])
        with torch.no_grad():
            feats = [f.detach() for f in self.backbone(x)]
        edge = torch.cat(
            [_resize(m(f), size) for m, f in zip(self.edge_sides, feats, strict=True)], dim=1
        )
        edge_logits = self.edge_out(edge)[:, 0]
        dp = torch.cat(
            [_resize(m(f), size) for m, f in zip(self.dp_sides, feats, strict=True)], dim=1
        )
        disp = self.dp_out(self.dp_mid(dp))
        if not self.training:
            mean: torch.Tensor = self.dp_mean  # type: ignore[assignment]  # a registered buffer
            disp = disp - mean.view(1, 2, 1, 1).to(disp.dtype)
        return edge_logits, disp

    @torch.no_grad()
    def boundary(self, x: torch.Tensor) -> torch.Tensor:
        """Inference boundary probabilities ``[B, h, w]``: sigmoid of the mean of the logits of
        the image and of its horizontal flip (flipped back), as the reference ``EdgeDisplacement``.
        """
        e, _ = self(x)
        ef, _ = self(torch.flip(x, dims=[-1]))
        return torch.sigmoid((e + torch.flip(ef, dims=[-1])) / 2)
