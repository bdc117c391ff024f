"""One training epoch of optimiser steps (AMP, gradient clipping, DDP) and the loss check."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..config import RunConfig
from ..errors import TrainingError
from .checkpoint import unwrap_model
from .optim import LRSchedule
from .runtime import move_batch

__all__ = ["check_losses", "train_epoch"]


def train_epoch(
    net: nn.Module,
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    scaler: torch.amp.GradScaler | None,
    amp_dtype: torch.dtype | None,
    epoch: int,
    steps: int,
    *,
    cfg: RunConfig,
    dev: torch.device,
    distributed: bool,
) -> tuple[float, float]:
    """One epoch of optimiser steps; returns (mean loss over steps, images/s all ranks)."""
    base: Any = unwrap_model(model)
    net.train()
    # on CUDA the loss is checked every few steps (one host sync per check) instead of
    # every step; the error still names the first bad step
    check_every = 1 if dev.type == "cpu" else 16
    pending: list[torch.Tensor] = []
    first_pending = 1
    loss_sum = 0.0
    n_images = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        x, y, m = move_batch(batch, dev, cfg.train.in_chans, cfg.train.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            out = net(x)
            loss = base.loss(out, y, m)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
        schedule.step()
        pending.append(loss.detach())
        n_images += len(batch)
        if len(pending) >= check_every or i + 1 == steps:
            loss_sum += check_losses(pending, epoch, first_pending, distributed)
            first_pending = i + 2
            pending = []
    if pending:
        loss_sum += check_losses(pending, epoch, first_pending, distributed)
    elapsed = time.perf_counter() - t0
    totals = torch.tensor([loss_sum, float(n_images), float(steps)], dtype=torch.float64)
    if distributed:
        totals = totals.to(dev) if dist.get_backend() == "nccl" else totals
        dist.all_reduce(totals)
        totals = totals.cpu()
    loss_sum, n_all, steps_all = totals.tolist()
    return loss_sum / max(1.0, steps_all), n_all / max(elapsed, 1e-9)


def check_losses(
    pending: list[torch.Tensor], epoch: int, first_step: int, distributed: bool
) -> float:
    """Sum of the pending step losses; raises TrainingError on the first non-finite one
    (on every rank at once under DDP)."""
    vals = torch.stack(pending).float()
    bad = (~torch.isfinite(vals)).any().to(torch.int32).reshape(1)
    if distributed:
        if dist.get_backend() != "nccl":
            bad = bad.cpu()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    vals = vals.cpu()
    if int(bad.item()):
        finite = torch.isfinite(vals)
        if bool(finite.all()):
            raise TrainingError(
                f"non-finite training loss on another rank at epoch {epoch}, "
                f"steps {first_step}..{first_step + len(pending) - 1}"
            )
        j = int((~finite).nonzero()[0, 0])
        raise TrainingError(
            f"non-finite training loss {float(vals[j])} at epoch {epoch}, step "
            f"{first_step + j} (1-based within the epoch); lower optim.lr, set "
            "train.grad_clip or check the data"
        )
    return float(vals.double().sum())
