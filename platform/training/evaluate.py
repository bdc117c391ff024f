"""Evaluation: one pass of a model over a split through the :class:`LocalizationSuite`.

:func:`evaluate_model` is what the trainer runs on the validation split every epoch.
:func:`evaluate` is the ONLY way to a test split (``test``, ``test-loc``, ...): it loads a run
folder or checkpoint file, rebuilds the method from the stored config, and evaluates it once
(the wsolevaluation protocol: the search never sees the test split). A method whose runs have
their own layout (a multi-stage pipeline) evaluates them through its staged runner
(:mod:`.runners`), as :func:`~lesionsweep.training.run_training` hands the run to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..config import DataConfig, RunConfig, config_from_dict, load_config, merge_flat
from ..data import build_dataset
from ..data.cache import read_manifest
from ..data.types import SplitDataset
from ..errors import ConfigError, TrainingError
from ..fileio import atomic_write_text
from ..methods import method_class
from ..metrics import LocalizationSuite
from .checkpoint import load_checkpoint, unwrap_model
from .runners import runner_for
from .runtime import (
    autocast_dtype,
    build_method,
    make_loader,
    move_batch,
    resolve_device,
    seed_everything,
)
from .tensorboard import OverlayItem

__all__ = ["evaluate", "evaluate_model", "resolve_checkpoint"]


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader[Any],
    suite: Any,
    device: torch.device,
    *,
    in_chans: int = 1,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
    overlays: int = 0,
    outputs: list[tuple[np.ndarray, np.ndarray, list[str]]] | None = None,
) -> tuple[dict[str, float], list[OverlayItem]]:
    """Run ``model`` over ``loader`` and compute the suite's metrics plus the mean loss.

    Args:
        model: a :class:`~lesionsweep.methods.Method` (DDP/compile wrappers are unwrapped, so
            this never runs a collective).
        loader: yields :class:`~lesionsweep.data.types.Batch` in a fixed order.
        suite: a ``LocalizationSuite``; it is reset first, then fed ``accumulate(logits [B, K],
            maps [B, K, h, w], batch, map_kind)`` per batch (float32 tensors on ``device``).
        overlays: how many images to keep for TensorBoard overlays: the first ones (in loader
            order) that have a positive label or a box, topped up with the first others.

    Returns:
        ``(metrics, overlay_items)``: the suite's keys plus ``"loss"`` (mean of the method's
        loss over images), and up to ``overlays`` :class:`OverlayItem`.
    """
    net: Any = unwrap_model(model)
    was_training = net.training
    net.eval()
    suite.reset()
    map_kind = net.map_kind
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_images = 0
    n_batches = 0
    with_pos: list[OverlayItem] = []
    others: list[OverlayItem] = []
    try:
        for batch in loader:
            x, y, m = move_batch(batch, device, in_chans, channels_last)
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)
            ):
                out = net(x)
                loss = net.loss(out, y, m)
                maps = net.localization_maps(out)
            logits = out.logits.float()
            maps = maps.float()
            if not bool(torch.isfinite(logits).all() & torch.isfinite(maps).all()):
                raise TrainingError(
                    f"non-finite logits or maps on evaluation batch {n_batches + 1} (images "
                    f"{', '.join(map(str, batch.ids[:3]))}...): the weights diverged "
                    "(lower optim.lr or set train.grad_clip)"
                )
            n_batches += 1
            loss_sum += loss.detach().double() * len(batch)
            n_images += len(batch)
            suite.accumulate(logits, maps, batch, map_kind)
            if outputs is not None:
                outputs.append((logits.cpu().numpy(), maps.cpu().numpy(), list(batch.ids)))
            if overlays and len(with_pos) < overlays:
                _collect(batch, logits, maps, overlays, with_pos, others)
    finally:
        net.train(was_training)
    if n_images == 0:
        raise TrainingError("evaluation split is empty: no images to evaluate")
    metrics = {k: float(v) for k, v in suite.compute().items()}
    metrics["loss"] = float(loss_sum.item()) / n_images
    items = (with_pos + others)[:overlays] if overlays else []
    return metrics, items


def _collect(
    batch: Any,
    logits: torch.Tensor,
    maps: torch.Tensor,
    n: int,
    with_pos: list[OverlayItem],
    others: list[OverlayItem],
) -> None:
    has_pos = (batch.targets > 0.5).any(1).tolist()
    for i in range(len(batch)):
        pos = bool(has_pos[i]) or len(batch.boxes[i]) > 0
        dest = with_pos if pos else others
        if len(dest) >= n:
            continue
        dest.append(
            OverlayItem(
                image=batch.images[i, 0].cpu().numpy(),
                maps=maps[i].cpu().numpy(),
                probs=torch.sigmoid(logits[i]).cpu().numpy(),
                target=batch.targets[i].cpu().numpy(),
                boxes=batch.boxes[i].cpu().numpy().reshape(-1, 5),
                id=str(batch.ids[i]),
            )
        )


def resolve_checkpoint(source: str | Path, which: str = "best") -> Path:
    """The checkpoint file for a run folder or the file itself.

    A run folder gives ``checkpoints/<which>.pt``, else the other of ``best.pt`` / ``last.pt``:
    ``train.keep_checkpoint`` keeps only one of them once a run is over (``best`` by default).
    """
    p = Path(source)
    if p.is_file():
        return p
    if not p.is_dir():
        raise ConfigError(f"evaluate: {p} is neither a run folder nor a checkpoint file")
    if which not in ("best", "last"):
        raise ConfigError(f"evaluate: which = {which!r}; choose 'best' or 'last'")
    for name in (which, "last" if which == "best" else "best"):
        f = p / "checkpoints" / f"{name}.pt"
        if f.is_file():
            return f
    raise ConfigError(
        f"evaluate: {p} has neither checkpoints/best.pt nor checkpoints/last.pt (a run trained "
        "with train.keep_checkpoint = none keeps no weights)"
    )


def evaluate(
    source: RunConfig | str | Path,
    split: str,
    *,
    out_path: str | Path | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    which: str = "best",
    checkpoint: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    outputs_path: str | Path | None = None,
) -> dict[str, float]:
    """Evaluate a trained method once on ``split`` (the only path to a test split).

    Args:
        source: a run folder (its ``checkpoints/<which>.pt``), a checkpoint file, or a
            :class:`RunConfig` (then the weights come from ``checkpoint``; without one, the
            method's seeded initialisation is evaluated — a chance baseline).
        split: any split the dataset provides (``val``, ``test``, ``test-loc``, ...).
        out_path: also write ``{"split", "checkpoint", "epoch", "metrics"}`` as JSON there
            (atomically; non-finite values become null).
        batch_size: overrides ``eval.batch_size``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        which: ``best`` or ``last`` for a run folder.
        checkpoint: weights file when ``source`` is a config.
        overrides: flat ``section.key`` values applied to the stored config (e.g.
            ``{"data.root": "/data/nih"}`` when the data moved).
        outputs_path: also save the per-image outputs as ``.npz`` there (atomically): ``logits``
            float32 ``[N, K]``, ``maps`` float32 ``[N, K, h, w]``, ``ids`` ``[N]`` (dataset
            order) and ``map_kind``, so :func:`lesionsweep.metrics.bootstrap_suite` can resample
            images. Not written for runs evaluated through an ``evaluate_run`` hook.

    Returns:
        ``{"<split>/<suite key>": value, ..., "<split>/loss": value, "epoch": checkpoint epoch}``.
        A run folder whose configured method declares a staged runner (e.g. the ``wsmis``
        pipeline) is evaluated by that runner's ``evaluate_run(folder, cfg, split,
        batch_size=, device=, which=)`` instead, ``cfg`` being its ``config.yaml`` with
        ``overrides``; that hook defines its keys (``<split>/...`` and ``epoch``).
    """
    hook = None if isinstance(source, RunConfig) else _run_evaluator(Path(source), overrides)
    if hook is not None:
        run_eval, run_cfg = hook
        kw: dict[str, Any] = {"batch_size": batch_size, "device": device, "which": which}
        out = dict(run_eval(Path(source), run_cfg, split, **kw))
        if out_path is not None:
            _write_result(Path(out_path), split, str(source), out)
        return out

    state: dict[str, Any] | None = None
    ckpt_path: Path | None = None
    if isinstance(source, RunConfig):
        cfg = source
        if checkpoint is not None:
            ckpt_path = Path(checkpoint)
            state = load_checkpoint(ckpt_path)
    else:
        ckpt_path = resolve_checkpoint(source, which)
        state = load_checkpoint(ckpt_path)
        cfg = config_from_dict(state["config"], source=f"{ckpt_path} (stored config)")
    if overrides:
        cfg = config_from_dict(merge_flat(cfg.to_dict(), overrides, "evaluate overrides"))
    dev = resolve_device(device)
    seed_everything(cfg.train.seed)
    dataset = evaluation_dataset(cfg.data, split)
    info = dataset.info
    model = build_method(cfg, info)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise TrainingError(f"{ckpt_path}: weights do not fit the stored method: {e}") from None
    model.to(dev)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_loader(
        dataset,
        batch_size=int(batch_size or cfg.eval.batch_size),
        num_workers=cfg.data.num_workers,
        device=dev,
    )
    suite = LocalizationSuite(info, cfg.data.image_size, cfg.eval.cam_curve_interval)
    kept: list[tuple[np.ndarray, np.ndarray, list[str]]] | None = (
        [] if outputs_path is not None else None
    )
    metrics, _ = evaluate_model(
        model,
        loader,
        suite,
        dev,
        in_chans=cfg.train.in_chans,
        channels_last=cfg.train.channels_last,
        amp_dtype=autocast_dtype(dev, cfg.train.amp),
        outputs=kept,
    )
    if kept is not None and outputs_path is not None:
        _write_outputs(Path(outputs_path), kept, str(unwrap_model(model).map_kind))
    out = {f"{split}/{k}": v for k, v in metrics.items()}
    out["epoch"] = float(state["epoch"]) if state is not None else 0.0
    if out_path is not None:
        _write_result(Path(out_path), split, str(ckpt_path) if ckpt_path else None, out)
    return out


def _write_outputs(
    path: Path, kept: list[tuple[np.ndarray, np.ndarray, list[str]]], map_kind: str
) -> None:
    logits = np.concatenate([k[0] for k in kept]).astype(np.float32)
    maps = np.concatenate([k[1] for k in kept]).astype(np.float32)
    ids = np.asarray([i for k in kept for i in k[2]], dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, logits=logits, maps=maps, ids=ids, map_kind=np.asarray(map_kind))
    tmp.replace(path)


def evaluation_dataset(data: DataConfig, split: str) -> SplitDataset:
    """``split`` of ``data``; from the original files when ``data.cache`` lacks that split.

    A sweep prepares a cache of only the splits its trials read (never a test split), and its
    trials' run configs point at it: evaluating such a run on ``test-loc`` reads the source.
    A cache that holds the split is used as always (and checked against ``data``).
    """
    if data.cache and split not in read_manifest(data.cache).get("splits", ()):
        data = dataclasses.replace(data, cache=None)
    return build_dataset(data, split)


def _write_result(path: Path, split: str, checkpoint: str | None, out: Mapping[str, Any]) -> None:
    doc = {
        "split": split,
        "checkpoint": checkpoint,
        "epoch": int(out.get("epoch", 0)),
        "metrics": json_safe(out),
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def _run_evaluator(
    source: Path, overrides: Mapping[str, Any] | None
) -> tuple[Any, RunConfig] | None:
    """``(runner.evaluate_run, config)`` when ``source`` is a run folder whose ``config.yaml``
    names a method with a staged runner; else None (the checkpoint path)."""
    cfg_file = source / "config.yaml"
    if not (source.is_dir() and cfg_file.is_file()):
        return None
    try:
        raw = yaml.safe_load(cfg_file.read_text())
    except (OSError, yaml.YAMLError):
        return None  # the checkpoint's stored config decides (and reports) on that path
    method = raw.get("method") if isinstance(raw, dict) else None
    name = method.get("name") if isinstance(method, dict) else None
    try:
        cls = method_class(str(name))
    except KeyError:
        return None
    staged = runner_for(cls)
    if staged is None:
        return None
    return staged.evaluate_run, load_config(cfg_file, overrides)


def json_safe(d: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a flat metrics dict with non-finite floats as ``None`` (strict JSON)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
            out[k] = None
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out
