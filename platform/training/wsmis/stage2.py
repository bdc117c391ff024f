"""Stage 2 of WSMIS: IRNet on the CAMs, then random-walk pseudo masks of the positive images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...methods.backbones import create_backbone
from ...methods.wsmis.affinity import (
    PairIndex,
    affinity_loss,
    ir_labels_from_cams,
    masks_from_random_walk,
    random_walk,
)
from ...methods.wsmis.cams import normalize_maps
from ...methods.wsmis.irnet import IRNet, grid_size
from ...methods.wsmis.model import effective_radius
from ...metrics import DiceEvaluator
from .context import WsmisContext
from .loading import add_dice, pack, poly_lr, random_flip, save_npy, unpack


def grid_cams(p: WsmisContext, split: str, rows: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    c = torch.from_numpy(p.cams[split][rows].astype(np.float32)).to(p.device)
    c = F.interpolate(c, size=grid, mode="bilinear", align_corners=False)
    return normalize_maps(c)


def build_irnet(p: WsmisContext) -> IRNet:
    if p.s["ir_backbone"] == "classifier":
        bb = create_backbone(p.model.backbone_name, p.model.in_chans, False,
                             output_stride=8)  # fmt: skip
        bb.load_state_dict(p.model.backbone.state_dict())
    else:
        bb = create_backbone(p.model.backbone_name, p.model.in_chans,
                             p.model.pretrained, output_stride=8)  # fmt: skip
    return IRNet(bb).to(p.device)


def run(p: WsmisContext) -> dict[str, float]:
    cfg, s = p.cfg, p.s
    sd = p.out / "stage2"
    size = (p.info.image_size, p.info.image_size)
    grid = grid_size(*size)
    index = PairIndex.build(effective_radius(s["radius"], grid))
    net = build_irnet(p)
    edge_p, dp_p = net.head_parameters()
    lr = s["stage2_lr"]
    opt = torch.optim.SGD(
        [{"params": edge_p, "lr": lr}, {"params": dp_p, "lr": 10 * lr}],
        lr=lr, weight_decay=1e-4,
    )  # fmt: skip
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.train.seed + 2)
    flip_gen = torch.Generator().manual_seed(cfg.train.seed + 3)
    loader = p.loader(p.train_ds, p.pos_idx, train=True, shuffle=True, gen=gen)
    steps = len(loader)
    if cfg.train.max_steps_per_epoch > 0:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    total = max(1, steps * s["stage2_epochs"])
    row_of = {int(j): r for r, j in enumerate(p.cam_index["train"])}
    it = 0
    metrics: dict[str, float] = {}
    for _epoch in range(s["stage2_epochs"]):
        net.train()
        sums = np.zeros(5)
        cnt = 0
        for i, (idx, batch) in enumerate(loader):
            if i >= steps:
                break
            rows = np.array([row_of[int(j)] for j in idx])
            x = p.images(batch)
            cams = grid_cams(p, "train", rows, grid)
            labels = ir_labels_from_cams(
                cams, batch.targets.to(p.device), s["ir_labels"], s["conf_fg"],
                s["conf_bg"], s["cam_threshold"],
            )  # fmt: skip
            x, labels = random_flip(flip_gen, x, labels)
            poly_lr(opt, base, it, total)
            opt.zero_grad(set_to_none=True)
            with p.autocast():
                edge, disp = net(x)
            terms = affinity_loss(torch.sigmoid(edge.float()), disp.float(), labels, index)
            loss = terms.total
            p.check_finite(loss, 2)
            loss.backward()
            opt.step()
            it += 1
            sums += [float(v.detach()) for v in
                     (loss, terms.pos, terms.neg, terms.dp_fg, terms.dp_bg)]  # fmt: skip
            cnt += 1
        mean = sums / max(1, cnt)
        names = ("stage2/loss", "stage2/pos", "stage2/neg", "stage2/dp_fg", "stage2/dp_bg")
        metrics = dict(zip(names, map(float, mean), strict=True))
        last = _epoch == s["stage2_epochs"] - 1
        if last:
            displacement_mean(p, net)
            p.save_model(sd / "irnet.pt", net)
            metrics.update(make_pseudo_masks(p, net, sd))
        p.save_model(sd / "checkpoint" / "model.pt", net)
        p.report(2, metrics, sd / "checkpoint")
    return metrics


@torch.no_grad()
def displacement_mean(p: WsmisContext, net: IRNet) -> None:
    """The reference's ``MeanShift``: mean displacement over the positive train images."""
    net.eval()
    net.dp_mean.zero_()
    acc, n = torch.zeros(2, device=p.device), 0
    for _, batch in p.loader(p.train_ds, p.pos_idx, train=False):
        _, disp = net(p.images(batch))
        acc += disp.float().mean(dim=(2, 3)).sum(0)
        n += len(batch)
    net.dp_mean.copy_(acc / max(1, n))


@torch.no_grad()
def propagate(
    p: WsmisContext, net: IRNet, x: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Pseudo masks bool ``[B, K, H, W]`` from images, grid CAMs and image labels."""
    s = p.s
    grid = tuple(cams.shape[-2:])
    boundary = net.boundary(x).float()
    rw = random_walk(
        cams, boundary, beta=s["beta"], exp_times=s["exp_times"],
        radius=effective_radius(s["rw_radius"], grid),
    )  # fmt: skip
    return masks_from_random_walk(rw, labels, s["bg_threshold"], tuple(x.shape[-2:]))


@torch.no_grad()
def make_pseudo_masks(p: WsmisContext, net: IRNet, sd: Path) -> dict[str, float]:

    net.eval()
    size = (p.info.image_size, p.info.image_size)
    grid = grid_size(*size)
    row_of = {int(j): r for r, j in enumerate(p.cam_index["train"])}
    packed = []
    for idx, batch in p.loader(p.train_ds, p.pos_idx, train=False):
        rows = np.array([row_of[int(j)] for j in idx])
        x = p.images(batch)
        masks = propagate(p, net, x, grid_cams(p, "train", rows, grid),
                               batch.targets.to(p.device))  # fmt: skip
        packed.append(pack(masks.cpu().numpy()))
    p.pseudo = np.concatenate(packed)
    p.pseudo_index = np.asarray(p.pos_idx, dtype=np.int64)
    save_npy(sd / "pseudo_masks_train.npy", p.pseudo)
    save_npy(sd / "pseudo_masks_train_index.npy", p.pseudo_index)
    out: dict[str, float] = {
        "stage2/pseudo_fg_fraction": float(
            unpack(p.pseudo, size[1]).mean() if len(p.pseudo) else 0.0
        )
    }
    if p.loc_ds is None:
        return out
    ev = DiceEvaluator(0.5)
    row_loc = {int(j): r for r, j in enumerate(p.cam_index["loc"])}
    for idx, batch in p.loader(p.loc_ds, range(len(p.loc_ds)), train=False, masks=True):
        rows = np.array([row_loc[int(j)] for j in idx])
        x = p.images(batch)
        masks = propagate(p, net, x, grid_cams(p, "loc", rows, grid),
                               batch.targets.to(p.device))  # fmt: skip
        add_dice(ev, masks, batch)
    d = ev.compute()
    out.update({"stage2/pseudo_dice": d["dice_pooled"],
                "stage2/pseudo_dice_per_image": d["dice_per_image"]})  # fmt: skip
    return out
