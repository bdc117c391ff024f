"""Evaluate a finished WSMIS run folder once on any split (the runner's ``evaluate`` hook)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import MethodConfig, RunConfig
from ...errors import ConfigError, TrainingError
from ...methods.backbones import create_backbone
from ...methods.wsmis import WSMIS
from ...methods.wsmis.unet import UNet
from ...metrics import LocalizationSuite
from ..checkpoint import load_checkpoint
from ..evaluate import evaluation_dataset
from ..runtime import (
    autocast_dtype,
    build_method,
    make_loader,
    prepare_images,
    resolve_device,
    seed_everything,
)
from .fingerprint import check_stage3_current

__all__ = ["evaluate_run"]


def evaluate_run(
    run_dir: str | Path,
    cfg: RunConfig,
    split: str,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    which: str = "best",
) -> dict[str, float]:
    """Evaluate a finished pipeline run folder once on ``split``.

    The runner's evaluation hook, behind :func:`lesionsweep.training.evaluate` for a wsmis
    run folder. It scores what the
    pipeline outputs: image logits ``[B, K]`` of the stage-1 classifier
    (``stage1/classifier.pt``) and mask logits ``[B, K, H, W]`` (full image resolution) of
    the stage-3 U-Net (``stage3/segmenter.pt``), fed together to the platform's
    :class:`~lesionsweep.metrics.LocalizationSuite` with ``map_kind="logits"``. So
    ``dice_pooled`` / ``dice_per_image`` are ``sigmoid > 0.5`` over every (image, class) pair
    with a known label, and ``auroc_macro`` the classifier's, exactly as the pipeline's
    ``val/*`` keys; the suite adds its other keys for the dataset (``pxap`` from the
    per-map min-max normalised U-Net logits, box metrics where the dataset has boxes).

    Args:
        run_dir: the ``out_dir`` of the run.
        cfg: the run config (its ``config.yaml``, evaluation overrides applied).
        split: any split of the dataset (``val``, ``test``, ``test-loc``, ...).
        batch_size: overrides ``eval.batch_size``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        which: ``best`` or ``last``; both mean the finished stage-3 U-Net (the pipeline's
            output; it keeps no per-epoch best copy).

    Returns:
        ``{"<split>/<suite key>": value, ..., "epoch": the step of the stage-3 model}``.

    Raises:
        ConfigError: bad ``which``; ``run_dir`` holds no finished pipeline (a missing
            ``stage1/classifier.pt``, ``stage3/segmenter.pt`` or ``stage3/done.json``), or
            its stage-3 outputs belong to another config than ``config.yaml`` (a re-run with
            changed knobs that did not finish); the message names the folder.
        TrainingError: weights that do not fit the configured method, non-finite outputs.
    """

    run = Path(run_dir)
    if which not in ("best", "last"):
        raise ConfigError(f"evaluate: which = {which!r}; choose 'best' or 'last'")
    clf_path, seg_path = run / "stage1" / "classifier.pt", run / "stage3" / "segmenter.pt"
    for p in (clf_path, seg_path):
        if not p.is_file():
            raise ConfigError(
                f"evaluate: {run} holds no finished wsmis pipeline: {p.relative_to(run)} is "
                "missing (run or resume the pipeline to the end of stage 3 first)"
            )
    check_stage3_current(run)

    dev = resolve_device(device)
    seed_everything(cfg.train.seed)
    ds = evaluation_dataset(cfg.data, split)
    info = ds.info
    # weights come from the checkpoints: never fetch pretrained ones
    kwargs = {**dict(cfg.method.kwargs), "pretrained": False}
    clf = build_method(cfg.replace(method=MethodConfig(cfg.method.name, kwargs)), info)
    if not isinstance(clf, WSMIS):
        raise ConfigError(f"method {cfg.method.name!r} is not the wsmis pipeline")
    unet = UNet(create_backbone(clf.backbone_name, clf.in_chans, False), info.num_classes)
    states = {}
    for net, path in ((clf, clf_path), (unet, seg_path)):
        states[path] = load_checkpoint(path, map_location=dev)
        try:
            net.load_state_dict(states[path]["model"])
        except (RuntimeError, KeyError) as e:
            raise TrainingError(f"{path}: weights do not fit the configured method: {e}") from None
        net.to(dev).eval()
    amp = autocast_dtype(dev, cfg.train.amp)
    amp = amp if amp == torch.bfloat16 else None  # as the pipeline: bf16 or fp32
    loader = make_loader(
        ds,
        batch_size=int(batch_size or cfg.eval.batch_size),
        num_workers=cfg.data.num_workers,
        device=dev,
    )
    suite = LocalizationSuite(info, cfg.data.image_size, cfg.eval.cam_curve_interval)
    n = 0
    with torch.no_grad():
        for batch in loader:
            x = prepare_images(batch.images, dev, cfg.train.in_chans, cfg.train.channels_last)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=bool(amp)):
                logits = clf(x).logits
                maps = unet(x)
            logits, maps = logits.float(), maps.float()
            if not bool(torch.isfinite(logits).all() & torch.isfinite(maps).all()):
                raise TrainingError(
                    f"{run}: non-finite classifier logits or U-Net maps on {split!r} images "
                    f"{', '.join(map(str, batch.ids[:3]))}..."
                )
            suite.accumulate(logits, maps, batch, "logits")
            n += len(batch)
    if n == 0:
        raise TrainingError(f"evaluate: split {split!r} is empty: no images to evaluate")
    out = {f"{split}/{k}": float(v) for k, v in suite.compute().items()}
    out["epoch"] = float(states[seg_path].get("epoch", 0))
    return out


# ====================================================================== data helpers
