"""Stage 1 of WSMIS: the DropBlock classifier, its CAMs of the train and Dice splits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.types import SplitDataset
from ...methods.base import MethodOutput
from ...methods.wsmis.cams import normalize_maps
from ...metrics import AurocEvaluator, DiceEvaluator
from ..optim import LRSchedule, build_optimizer
from .context import WsmisContext
from .loading import add_dice, random_flip, save_npy


def run(p: WsmisContext) -> dict[str, float]:

    cfg, model = p.cfg, p.model
    sd = p.out / "stage1"
    opt = build_optimizer(model, cfg.optim)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    n = len(p.train_ds)
    loader = p.loader(p.train_ds, range(n), train=True, shuffle=True, gen=gen)
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
            x = p.images(batch)
            y = batch.targets.to(p.device)
            m = batch.target_mask.to(p.device)
            (x,) = random_flip(flip_gen, x)
            opt.zero_grad(set_to_none=True)
            with p.autocast():
                out = model(x)
                loss = model.loss(out, y, m)
            p.check_finite(loss, 1)
            loss.backward()
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            tot += float(loss.detach())
            cnt += 1
        metrics = {"stage1/loss": tot / max(1, cnt), **eval_classifier(p)}
        sched.end_epoch(metrics.get("stage1/val_loss"))
        p.save_model(sd / "checkpoint" / "model.pt", model)
        p.report(1, metrics, sd / "checkpoint")
    p.save_model(sd / "classifier.pt", model)
    # CAMs of the positive train images (stage 2 input) and of the Dice split
    p.cams, p.cam_index = {}, {}
    cam, _ = extract_cams(p, p.train_ds, p.pos_idx)
    store_cams(p, sd, "train", cam, p.pos_idx)
    if p.loc_ds is not None:
        idx = np.arange(len(p.loc_ds))
        cam, logits = extract_cams(p, p.loc_ds, idx)
        store_cams(p, sd, "loc", cam, idx)
        save_npy(sd / "logits_loc.npy", logits)
    return metrics


def store_cams(p: WsmisContext, sd: Path, split: str, cam: np.ndarray, idx: np.ndarray) -> None:
    save_npy(sd / f"cams_{split}.npy", cam)
    save_npy(sd / f"cams_{split}_index.npy", np.asarray(idx, dtype=np.int64))
    p.cams[split] = cam
    p.cam_index[split] = np.asarray(idx, dtype=np.int64)


@torch.no_grad()
def extract_cams(
    p: WsmisContext, ds: SplitDataset, idx: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``cam_kind`` maps (float16 ``[n, K, h, w]``) and logits ``[n, K]``."""
    model = p.model.eval()
    cams, logits = [], []
    for _, batch in p.loader(ds, idx, train=False):
        with p.autocast():
            out = model(p.images(batch))
        cam = model.cams_from_features(out.extras["features"])
        cams.append(cam.cpu().numpy().astype(np.float16))
        logits.append(out.logits.float().cpu().numpy())
    return np.concatenate(cams), np.concatenate(logits)


@torch.no_grad()
def eval_classifier(p: WsmisContext) -> dict[str, float]:
    """AUROC on ``eval.split`` and gated / oracle CAM Dice on the Dice split."""

    model = p.model.eval()
    au = AurocEvaluator(p.info.classes)
    loss_sum, n = 0.0, 0
    same = p.loc_ds is p.eval_ds
    dice_gated, dice_oracle = DiceEvaluator(0.5), DiceEvaluator(0.5)
    for _, batch in p.loader(p.eval_ds, range(len(p.eval_ds)), train=False, masks=same):
        x = p.images(batch)
        with p.autocast():
            out = model(x)
            loss = model.loss(out, batch.targets.to(p.device),
                              batch.target_mask.to(p.device))  # fmt: skip
        au.accumulate(out.logits.float(), batch.targets, batch.target_mask)
        loss_sum += float(loss) * len(batch)
        n += len(batch)
        if same:
            cam_dice(p, x, out, batch, dice_gated, dice_oracle)
    if p.loc_ds is not None and not same:
        for _, batch in p.loader(p.loc_ds, range(len(p.loc_ds)), train=False, masks=True):
            x = p.images(batch)
            with p.autocast():
                out_l = model(x)
            cam_dice(p, x, out_l, batch, dice_gated, dice_oracle)
    a = au.compute()
    out = {
        "stage1/auroc": a["auroc_macro"],
        "stage1/val_loss": loss_sum / max(1, n),
        "val/auroc_macro": a["auroc_macro"],
    }
    if p.loc_ds is not None:
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


def cam_dice(p: WsmisContext, x: torch.Tensor, out: MethodOutput, batch: Any, gated: Any,
              oracle: Any) -> None:  # fmt: skip
    size = tuple(x.shape[-2:])
    cams = p.model.cams_from_features(out.extras["features"])
    up = normalize_maps(F.interpolate(cams, size=size, mode="bilinear", align_corners=False))
    fg = up > p.s["cam_threshold"]
    pred_pos = (torch.sigmoid(out.logits.float()) > 0.5)[:, :, None, None]
    true_pos = (batch.targets.to(p.device) > 0.5)[:, :, None, None]
    add_dice(gated, fg & pred_pos, batch)
    add_dice(oracle, fg & true_pos, batch)
