"""DropBlock (Ghiasi et al. 2018) as used by Viniavskyi et al. (methods.md section 4.1).

The authors' variant (``ucuapps/WSMIS`` ``dropblock/dblock.py``):

* block centres are Bernoulli(``gamma``) per batch item and spatial position, shared over channels,
  with ``gamma = drop_prob / block_size**2`` (no border correction);
* the block mask is the max-pool of the centre mask with a ``block_size`` window, stride 1 and
  padding ``block_size // 2`` (an even size drops the last row/column of the pooled map), so
  blocks near the border are clipped;
* the output is ``x * keep * keep.numel() / keep.sum()``: the scale is computed over the whole
  batch, so the mean over a constant input is kept exactly;
* identity in eval mode and when ``drop_prob == 0``.

The expected dropped fraction away from the border is ``1 - (1 - gamma)**(block_size**2)``, which
is close to ``drop_prob`` for small ``drop_prob`` (0.0956 for p = 0.1, block 3).

:class:`LinearWarmup` is the authors' ``LinearScheduler``: ``drop_prob`` rises linearly from 0 to
its target over ``warmup_steps`` optimizer steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropBlock2D", "LinearWarmup"]


class DropBlock2D(nn.Module):
    """Drop square blocks of a feature map ``[B, C, H, W]`` (blocks shared over channels).

    Args:
        drop_prob: target probability that a unit is dropped, in ``[0, 1)``.
        block_size: side of the dropped squares (>= 1), in feature-map pixels.
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 7) -> None:
        super().__init__()
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f"DropBlock drop_prob must be in [0, 1), got {drop_prob!r}")
        if int(block_size) < 1:
            raise ValueError(f"DropBlock block_size must be >= 1, got {block_size!r}")
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)

    @property
    def gamma(self) -> float:
        """Bernoulli rate of block centres: ``drop_prob / block_size**2``."""
        return self.drop_prob / self.block_size**2

    def block_mask(self, centres: torch.Tensor) -> torch.Tensor:
        """Keep mask ``[B, H, W]`` (1 = keep) from a 0/1 centre mask ``[B, H, W]``."""
        k = self.block_size
        dropped = F.max_pool2d(centres[:, None], kernel_size=k, stride=1, padding=k // 2)
        if k % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]
        return 1.0 - dropped[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DropBlock2D expects [B, C, H, W], got shape {tuple(x.shape)}")
        if not self.training or self.drop_prob == 0.0:
            return x
        b, _, h, w = x.shape
        centres = (torch.rand(b, h, w, device=x.device) < self.gamma).to(x.dtype)
        keep = self.block_mask(centres)
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        return x * keep[:, None] * scale

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class LinearWarmup:
    """Linear warm-up of ``drop_prob``: ``target * min(1, step / warmup_steps)``.

    Args:
        target: final drop probability.
        warmup_steps: steps to reach it; 0 applies ``target`` from the first step.
    """

    def __init__(self, target: float, warmup_steps: int) -> None:
        if int(warmup_steps) < 0:
            raise ValueError(f"dropblock_warmup_steps must be >= 0, got {warmup_steps!r}")
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.target
        return self.target * min(1.0, max(0, int(step)) / self.warmup_steps)
