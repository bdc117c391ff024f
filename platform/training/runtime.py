"""Shared pieces of training and evaluation: device, precision, image preparation, seeding,
data loaders and building a method from a config.

Image preparation (on the training device, never in the loader): ``uint8`` ``[B, 1, H, W]`` →
``float32`` ``(x / 255 - 0.5) / 0.25`` (a fixed normalisation: 0..255 maps to -2..2, mean 0.5 and
std 0.25 of the unit range, close to chest X-ray statistics and the same for every dataset, so no
per-dataset statistics are needed) → replicated to ``[B, 3, H, W]`` when ``train.in_chans == 3``
→ ``channels_last`` when asked.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import RunConfig
from ..data.types import Batch, DatasetInfo, Sample, collate
from ..errors import ConfigError
from ..methods import create_loss, create_method, method_class, method_params
from ..methods.losses import loss_names, loss_params

__all__ = [
    "NORM_MEAN",
    "NORM_STD",
    "resolve_device",
    "autocast_dtype",
    "prepare_images",
    "move_batch",
    "seed_everything",
    "derive_seed",
    "worker_init_fn",
    "make_loader",
    "build_method",
    "check_training_split",
]

#: Normalisation of images scaled to [0, 1]: ``(x - NORM_MEAN) / NORM_STD``.
NORM_MEAN = 0.5
NORM_STD = 0.25


def check_training_split(split: str) -> None:
    """Refuse a test split for anything but :func:`lesionsweep.training.evaluate`."""
    if split.lower().startswith("test"):
        raise ConfigError(
            f"eval.split = {split!r}: a test split is reachable only through "
            "`lesionsweep evaluate` (lesionsweep.training.evaluate), never during training or "
            "a sweep; use a validation split such as 'val'"
        )


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` into a device.

    ``auto`` and ``cuda`` pick ``cuda:$LOCAL_RANK`` when ``LOCAL_RANK`` is set (one process per
    GPU under torch.distributed / Ray Train), else the current CUDA device; ``auto`` falls back to
    the CPU without CUDA. The chosen CUDA device becomes the current one.
    """
    spec = str(spec).strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec not in ("auto", "cuda") and not spec.startswith("cuda:"):
        raise ConfigError(f"train.device = {spec!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        if spec == "auto":
            return torch.device("cpu")
        raise ConfigError(f"train.device = {spec!r} but CUDA is not available on this machine")
    if spec.startswith("cuda:"):
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise ConfigError(f"train.device = {spec!r} is not a valid device") from None
    else:
        local = os.environ.get("LOCAL_RANK")
        idx = int(local) if local is not None else torch.cuda.current_device()
        dev = torch.device("cuda", idx % torch.cuda.device_count())
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device = {spec!r}: only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    torch.cuda.set_device(dev)
    return dev


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Mixed-precision dtype: bf16 where supported, else fp16, on CUDA only; None = off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def prepare_images(
    images: torch.Tensor, device: torch.device, in_chans: int = 1, channels_last: bool = False
) -> torch.Tensor:
    """``uint8`` ``[B, 1, H, W]`` → normalised ``float32`` ``[B, in_chans, H, W]`` on ``device``
    (see the module docstring)."""
    x = images.to(device, non_blocking=True).to(torch.float32)
    x = x.sub_(255.0 * NORM_MEAN).mul_(1.0 / (255.0 * NORM_STD))
    if in_chans != x.shape[1]:
        x = x.expand(-1, in_chans, -1, -1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    elif not x.is_contiguous():
        x = x.contiguous()
    return x


def move_batch(
    batch: Batch, device: torch.device, in_chans: int = 1, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (prepared), targets ``[B, K]`` and target mask ``[B, K]`` on ``device``."""
    x = prepare_images(batch.images, device, in_chans, channels_last)
    y = batch.targets.to(device, non_blocking=True)
    m = batch.target_mask.to(device, non_blocking=True)
    return x, y, m


def derive_seed(*parts: int) -> int:
    """A 31-bit seed mixed from integers (e.g. run seed, epoch, rank)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0]
    ) & (0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random`` and numpy in a DataLoader worker from its torch seed (which the loader
    derives from its generator and the worker id)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def collate_labels_only(samples: list[Sample]) -> Batch:
    """Training collate: images and image labels only (``boxes=[]``, ``masks=None``).

    Training never reads localization labels, and each tensor a DataLoader worker hands over
    costs a shared-memory segment and a file descriptor: with the 64 per-image box tensors of a
    batch, the loop ran at 0.85x a bare loop's images/s on an H100 (0.98x without them), and a
    ``[B, K, H, W]`` mask stack would be copied, pinned and shipped for nothing.
    """
    if not samples:
        raise ValueError("collate_labels_only() got an empty list of samples")
    targets = torch.stack([s.target for s in samples])
    tmask = torch.stack(
        [s.target_mask if s.target_mask is not None else torch.ones_like(s.target) for s in samples]
    )
    return Batch(
        images=torch.stack([s.image for s in samples]),
        targets=targets,
        target_mask=tmask,
        boxes=[],
        masks=None,
        ids=[s.id for s in samples],
    )


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    labels_only: bool = False,
) -> DataLoader[Any]:
    """A DataLoader yielding :class:`Batch` (pinned memory on CUDA, persistent workers);
    ``labels_only=True`` leaves boxes and masks out (see :func:`collate_labels_only`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_labels_only if labels_only else collate,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )


def build_method(cfg: RunConfig, info: DatasetInfo) -> torch.nn.Module:
    """Build ``cfg.method`` with ``cfg.loss`` as its criterion for ``info.num_classes`` classes.

    ``train.in_chans`` is passed as the method's ``in_chans`` when its constructor takes one.

    Raises:
        ConfigError: unknown method/loss name or key, a rejected value, an image size that is not
            a multiple of the method's ``input_multiple``; the message names the config key.
    """
    name = cfg.method.name
    try:
        cls = method_class(name)
    except KeyError as e:
        raise ConfigError(f"method.name = {name!r}: {e.args[0]}") from None
    params = method_params(name)
    kwargs = dict(cfg.method.kwargs)
    bad = sorted(set(kwargs) - set(params))
    if bad:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'method.{k}' for k in bad)} for method {name!r}; "
            f"allowed: {', '.join(sorted(params))}"
        )
    if "in_chans" in params:
        if "in_chans" in kwargs and int(kwargs["in_chans"]) != cfg.train.in_chans:
            raise ConfigError(
                f"method.in_chans = {kwargs['in_chans']!r} contradicts train.in_chans = "
                f"{cfg.train.in_chans}; set train.in_chans only"
            )
        kwargs["in_chans"] = cfg.train.in_chans
    elif cfg.train.in_chans != 1:
        raise ConfigError(
            f"train.in_chans = {cfg.train.in_chans}: method {name!r} takes no in_chans argument"
        )
    mult = int(getattr(cls, "input_multiple", 1) or 1)
    if cfg.data.image_size % mult:
        raise ConfigError(
            f"data.image_size = {cfg.data.image_size} must be a multiple of {mult} for method "
            f"{name!r}"
        )
    if cfg.loss.name not in loss_names():
        raise ConfigError(
            f"loss.name = {cfg.loss.name!r} is not a registered loss; "
            f"choose one of: {', '.join(loss_names())}"
        )
    lbad = sorted(set(cfg.loss.kwargs) - set(loss_params(cfg.loss.name)))
    if lbad:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'loss.{k}' for k in lbad)} for loss {cfg.loss.name!r}; "
            f"allowed: {', '.join(sorted(loss_params(cfg.loss.name))) or '(none)'}"
        )
    try:
        criterion = create_loss(cfg.loss.name, **dict(cfg.loss.kwargs))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss {cfg.loss.name!r} ({_kv('loss', cfg.loss.kwargs)}): {e}") from None
    try:
        return create_method(name, info.num_classes, criterion=criterion, **kwargs)
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"method {name!r} ({_kv('method', kwargs)}): {e}") from None


def _kv(section: str, kwargs: Any) -> str:
    return ", ".join(f"{section}.{k}={v!r}" for k, v in dict(kwargs).items()) or "defaults"
