"""The report's localization-map panel: chosen trials side by side on the same validation films.

For each chosen trial (the best of each method, or the top k), its checkpoint is loaded from its
run folder (``checkpoints/best.pt``, else ``last.pt``), the method is rebuilt from the stored run
config, and run on a few fixed validation images: the first ``n_images`` items with at least one
ground-truth box of the localization validation split (``val-loc`` where the dataset has one,
else the config's ``eval.split``). Each cell is the image with the map of its first box's class
as a JET overlay and the ground-truth boxes in green (:func:`~lesionsweep.training.tensorboard.
render_overlay`), embedded as a PNG data URI. A trial whose checkpoints were not kept (or whose
method evaluates through its own pipeline) gets a note instead of images.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...config import config_from_dict
from ...data import build_dataset
from ...data.types import collate
from ...errors import LesionSweepError
from ...ranking import order_sign
from ...training import build_method, load_checkpoint, prepare_images, resolve_checkpoint
from ...training.tensorboard import render_overlay
from .data import SweepData, objective_value, run_folder

__all__ = ["MapRow", "MapPanel", "choose_trials", "build_map_panel", "png_data_uri"]


@dataclass
class MapRow:
    """One trial's row: its label and either PNG data URIs (one per image) or a note."""

    trial_id: str
    label: str
    images: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class MapPanel:
    """The panel: the image ids (columns), the split they come from, and one row per trial."""

    image_ids: list[str]
    split: str
    rows: list[MapRow]
    note: str = ""


def png_data_uri(rgb: np.ndarray) -> str:
    """``uint8`` ``[H, W, 3]`` RGB → ``data:image/png;base64,...``."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover - OpenCV cannot fail on a valid uint8 array
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def choose_trials(data: SweepData, top: int | None = None) -> list[dict[str, Any]]:
    """The completed trials to show: the best of each method (``top=None``), else the top
    ``top`` overall, ranked on the first objective metric."""
    done = [
        r
        for r in data.trials
        if r["status"] == "completed" and objective_value(r, data.metric) is not None
    ]
    sign = order_sign(data.mode)
    done.sort(key=lambda r: (sign * objective_value(r, data.metric), r["trial_id"]))
    if top is not None:
        return done[:top]
    seen: set[str] = set()
    out = []
    for r in done:
        if r["method"] not in seen:
            seen.add(r["method"])
            out.append(r)
    return out


def _films(cfg: Any, n: int, scan: int = 256) -> tuple[str, list[Any]]:
    """``(split, samples)``: the first ``n`` items with a box of the localization val split."""
    try:
        ds = build_dataset(cfg.data, "val-loc")
        split = "val-loc"
    except LesionSweepError:
        ds = build_dataset(cfg.data, cfg.eval.split)
        split = cfg.eval.split
    out = []
    for i in range(min(len(ds), scan)):
        s = ds[i]
        if len(s.boxes):
            out.append(s)
            if len(out) == n:
                break
    return split, out


@torch.no_grad()
def _render(path: Path, samples: Sequence[Any], size: int) -> list[str]:
    state = load_checkpoint(resolve_checkpoint(path, "best"))
    cfg = config_from_dict(state["config"], source=f"{path} (stored config)")
    model = build_method(cfg, build_dataset(cfg.data, cfg.eval.split).info)
    model.load_state_dict(state["model"])
    model.eval()
    batch = collate(list(samples))
    x = prepare_images(batch.images, torch.device("cpu"), cfg.train.in_chans)
    maps = model.localization_maps(model(x)).float()
    uris = []
    for i, s in enumerate(samples):
        boxes = s.boxes.numpy().reshape(-1, 5)
        c = int(boxes[0, 0])
        heat = F.interpolate(
            maps[i : i + 1, c : c + 1],
            size=tuple(s.image.shape[-2:]),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        rgb = render_overlay(s.image[0].numpy(), heat.numpy(), boxes[boxes[:, 0] == c])
        if rgb.shape[0] != size:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_NEAREST)
        uris.append(png_data_uri(rgb))
    return uris


def build_map_panel(
    data: SweepData, top: int | None = None, n_images: int = 4, size: int = 192
) -> MapPanel:
    """Render the chosen trials' maps on the same ``n_images`` validation films.

    Args:
        data: the sweep.
        top: show the top ``top`` trials overall instead of the best per method.
        n_images: films per row.
        size: side of each rendered cell in pixels.
    """
    chosen = choose_trials(data, top)
    if not chosen:
        return MapPanel([], "", [], note="no completed trial: no maps to show")
    cfg0 = config_from_dict(json.loads(chosen[0]["config_json"]), source="trials.parquet")
    try:
        split, films = _films(cfg0, n_images)
    except LesionSweepError as e:
        return MapPanel([], "", [], note=f"validation films not available here: {e}")
    if not films:
        return MapPanel([], split, [], note=f"no image with a ground-truth box in {split}")
    rows = []
    for r in chosen:
        label = (
            f"{r['method']} · {r['trial_id']} · {data.metric} {objective_value(r, data.metric):.4g}"
        )
        row = MapRow(r["trial_id"], label)
        folder = run_folder(data, r)
        if folder is None:
            row.note = "run folder not found (moved or not kept)"
        else:
            try:
                row.images = _render(folder, films, size)
            except (LesionSweepError, KeyError, RuntimeError) as e:
                row.note = f"no maps: {str(e).splitlines()[0]}"
        rows.append(row)
    return MapPanel([s.id for s in films], split, rows)
