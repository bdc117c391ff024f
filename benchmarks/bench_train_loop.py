"""Throughput of ``run_training``'s loop vs a bare torch loop on the same model and data.

Both loops train the same method (default: CAM on timm ``resnet18``) on the same phantom images,
preloaded into memory, with the same batch size, DataLoader workers, optimiser, mixed precision
and memory format. They run interleaved in one process: the trainer's reporter runs one bare
round after each trainer epoch, so both see the same GPU clocks and thermal state. Epoch/round 1
is warm-up (cuDNN autotuning, allocator) and is not counted; the medians of the other rounds are
compared.

The bare loop is what one would write by hand: ``DataLoader(TensorDataset(uint8 images, labels))``
→ ``.to(device, non_blocking=True)`` → ``float`` / normalise → forward under autocast → BCE on
the image logits → backward → step, no per-step host sync. The trainer's loop adds the Sample/Batch
collate, the method's loss call, its LR schedule and a finite-loss check every 16 steps.

    python benchmarks/bench_train_loop.py --device cuda --image-size 256 --batch-size 64 --steps 100

Prints both images/s and the ratio trainer / bare (target >= 0.95). Needs no Ray.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from lesionsweep.config import config_from_dict
from lesionsweep.data import build_dataset
from lesionsweep.data.types import DatasetInfo, Sample
from lesionsweep.training import EpochReport, Trainer, autocast_dtype, build_method, resolve_device
from lesionsweep.training.runtime import NORM_MEAN, NORM_STD
from torch.utils.data import DataLoader, Dataset, TensorDataset


class Preloaded(Dataset[Sample]):
    """``length`` items cycling over the first ``n`` samples of another dataset, held in memory
    (no decoding or synthesis per item)."""

    def __init__(self, source: Any, n: int, length: int | None = None) -> None:
        n = min(n, len(source))
        self.items = [source[i] for i in range(n)]
        self.length = length or n
        self.info: DatasetInfo = source.info

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Sample:
        return self.items[i % len(self.items)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds (after one warm-up)")
    ap.add_argument("--method", default="cam")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--unique-images", type=int, default=512, help="distinct phantom images")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args(argv)

    n_train = args.steps * args.batch_size
    n_unique = min(args.unique_images, n_train)
    cfg = config_from_dict(
        {
            "method": {"name": args.method, "backbone": args.backbone},
            "data": {
                "dataset": "phantom",
                "image_size": args.image_size,
                "num_workers": args.num_workers,
                "options": {"num_train": n_unique, "num_val": args.batch_size},
            },
            "optim": {"name": "adam", "lr": 1e-4},
            "train": {
                "epochs": args.rounds + 1,
                "batch_size": args.batch_size,
                "device": args.device,
                "amp": not args.no_amp,
                "channels_last": args.channels_last,
                "max_steps_per_epoch": args.steps,
                "log_images": 0,
            },
            "eval": {
                "batch_size": args.batch_size,
                "select_metric": "val/loss",
                "select_mode": "min",
            },
        },
        source="<bench>",
    )
    t0 = time.perf_counter()
    train_ds = Preloaded(build_dataset(cfg.data, "train"), n_unique, n_train)
    val_ds = Preloaded(build_dataset(cfg.data, "val"), args.batch_size)
    print(
        f"preloaded {n_unique} train (cycled to {n_train}) + {len(val_ds)} val phantom images "
        f"({args.image_size}px) in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    dev = resolve_device(args.device)
    amp = autocast_dtype(dev, cfg.train.amp)
    steps = min(args.steps, len(train_ds) // args.batch_size)

    # ---- the bare loop: same module class/config, plain tensors
    torch.manual_seed(0)
    bare_model = build_method(cfg, train_ds.info).to(dev)
    if args.channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-4)
    idx = torch.arange(n_train) % n_unique
    images = torch.stack([s.image for s in train_ds.items])[idx]
    targets = torch.stack([s.target for s in train_ds.items])[idx]
    bare_loader = DataLoader(
        TensorDataset(images, targets),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )
    scale, shift = 1.0 / (255.0 * NORM_STD), 255.0 * NORM_MEAN
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def bare_round() -> float:
        bare_model.train()
        n = 0
        t = time.perf_counter()
        for i, (x, y) in enumerate(bare_loader):
            if i >= steps:
                break
            x = x.to(dev, non_blocking=True).float().sub_(shift).mul_(scale)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(dev, non_blocking=True)
            bare_opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = bare_model(x).logits
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(bare_opt)
                scaler.update()
            else:
                loss.backward()
                bare_opt.step()
            n += x.shape[0]
        loss.item()  # sync: every queued kernel is done
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return n / (time.perf_counter() - t)

    trainer_ips: list[float] = []
    bare_ips: list[float] = []

    def reporter(rep: EpochReport) -> None:
        trainer_ips.append(rep.metrics["train/images_per_s"])
        bare_ips.append(bare_round())
        print(
            f"round {rep.epoch}{' (warm-up)' if rep.epoch == 1 else ''}: trainer "
            f"{trainer_ips[-1]:.1f} img/s, bare {bare_ips[-1]:.1f} img/s",
            file=sys.stderr,
        )

    with tempfile.TemporaryDirectory() as out:
        Trainer(cfg, out, datasets=(train_ds, val_ds)).fit(reporter=reporter, resume=False)

    tr, br = statistics.median(trainer_ips[1:]), statistics.median(bare_ips[1:])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"device={name} method={args.method}/{args.backbone} image={args.image_size} "
        f"batch={args.batch_size} steps={steps} amp={amp} channels_last={args.channels_last} "
        f"workers={args.num_workers}"
    )
    print(f"run_training loop: {tr:10.1f} images/s (median of {len(trainer_ips) - 1} rounds)")
    print(f"bare torch loop:   {br:10.1f} images/s")
    print(f"ratio trainer/bare: {tr / br:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
