"""Stage 3 of WSMIS: the U-Net trained on the pseudo masks, scored by Dice on the Dice split."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...methods.backbones import create_backbone
from ...methods.wsmis.unet import UNet
from ...metrics import DiceEvaluator
from ..optim import build_optimizer
from .context import WsmisContext
from .loading import add_dice, poly_lr, random_flip, unpack


def build_unet(p: WsmisContext) -> UNet:
    m = p.model
    if p.s["seg_encoder_init"] == "classifier":
        enc = create_backbone(m.backbone_name, m.in_chans, False)
        enc.load_state_dict(m.backbone.state_dict())
    else:
        enc = create_backbone(m.backbone_name, m.in_chans, m.pretrained)
    return UNet(enc, p.info.num_classes).to(p.device)


def run(p: WsmisContext) -> dict[str, float]:
    cfg, s = p.cfg, p.s
    sd = p.out / "stage3"
    net = build_unet(p)
    opt = stage3_optimizer(p, net)
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.train.seed + 4)
    flip_gen = torch.Generator().manual_seed(cfg.train.seed + 5)
    n = len(p.train_ds)
    loader = p.loader(p.train_ds, range(n), train=True, shuffle=True, gen=gen)
    steps = len(loader)
    if cfg.train.max_steps_per_epoch > 0:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    total = max(1, steps * s["stage3_epochs"])
    row_of = {int(j): r for r, j in enumerate(p.pseudo_index)}
    size = (p.info.image_size, p.info.image_size)
    k = p.info.num_classes
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
                    tgt[b] = unpack(p.pseudo[r], size[1])
            y = torch.from_numpy(tgt).to(p.device).float()
            known = batch.target_mask.to(p.device)[:, :, None, None]
            x = p.images(batch)
            x, y = random_flip(flip_gen, x, y)
            poly_lr(opt, base, it, total)
            opt.zero_grad(set_to_none=True)
            with p.autocast():
                logits = net(x)
            per = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
            loss = (per * known).sum() / (known.sum() * size[0] * size[1]).clamp_min(1.0)
            p.check_finite(loss, 3)
            loss.backward()
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
            opt.step()
            it += 1
            tot += float(loss.detach())
            cnt += 1
        metrics = {"stage3/loss": tot / max(1, cnt), **eval_segmenter(p, net)}
        p.save_model(sd / "checkpoint" / "model.pt", net)
        p.report(3, metrics, sd / "checkpoint")
    p.save_model(sd / "segmenter.pt", net)
    return metrics


def stage3_optimizer(p: WsmisContext, net: UNet) -> torch.optim.Optimizer:
    """The platform's optimiser (:func:`lesionsweep.training.build_optimizer`: family,
    momentum, weight decay on weights of rank >= 2 only) at ``stage3_lr``, its groups split
    so the encoder runs at a tenth of the decoder's rate (the reference's 1e-4 / 1e-3)."""

    lr = p.s["stage3_lr"]
    opt = build_optimizer(net, dataclasses.replace(p.cfg.optim, lr=lr))
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
def eval_segmenter(p: WsmisContext, net: UNet) -> dict[str, float]:

    if p.loc_ds is None:
        return {}
    net.eval()
    ev = DiceEvaluator(0.5)
    for _, batch in p.loader(p.loc_ds, range(len(p.loc_ds)), train=False, masks=True):
        with p.autocast():
            logits = net(p.images(batch))
        add_dice(ev, torch.sigmoid(logits.float()) > 0.5, batch)
    d = ev.compute()
    return {"val/dice_pooled": d["dice_pooled"], "val/dice_per_image": d["dice_per_image"],
            "stage3/dice_pooled": d["dice_pooled"]}  # fmt: skip
