"""What the trainer validates every epoch: the localization split next to ``eval.split``, each
split's loader and :class:`~lesionsweep.metrics.LocalizationSuite`, and one validation pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import LOC_SPLIT_CHOICES, RunConfig
from ..data import available_splits, build_dataset
from ..data.cache import read_manifest
from ..data.types import DatasetInfo
from ..errors import ConfigError, DataError, TrainingError, refuse_test_split
from ..metrics import LocalizationSuite
from .evaluate import evaluate_model
from .runtime import make_loader

__all__ = [
    "EvalTarget",
    "evaluate_targets",
    "has_loc_labels",
    "resolve_loc_split",
    "setup_validation",
]


def has_loc_labels(info: DatasetInfo) -> bool:
    return bool(info.has_boxes or info.has_masks)


def _check_loc_split_name(split: str) -> None:
    refuse_test_split(split, "eval.loc_split")


def resolve_loc_split(cfg: RunConfig, eval_info: DatasetInfo) -> str | None:
    """The localization split to evaluate every epoch next to ``cfg.eval.split``, or None.

    ``eval.loc_split`` None or ``"none"``: None. ``"val-loc"``: that split (refused when it is
    ``eval.split`` itself). ``"auto"``: ``"val-loc"`` when ``eval_info`` (the
    ``DatasetInfo`` of the ``eval.split`` dataset) has neither boxes nor masks, ``eval.split`` is
    not ``val-loc`` and the data source offers ``val-loc`` (the dataset class's ``splits``, or
    the cache manifest when ``data.cache`` is set); else None. Whether the ``val-loc`` items
    really carry boxes or masks, and whether there are any, is only known once the split is
    built: the trainer drops an ``"auto"`` split that turns out empty or without them.

    Raises:
        ConfigError: ``eval.loc_split`` is a test split, ``eval.split`` itself or not one of
            :data:`~lesionsweep.config.LOC_SPLIT_CHOICES` (a config built without
            :func:`~lesionsweep.config.config_from_dict`'s checks).
        DataError: ``data.cache`` is set but its manifest is missing or corrupt (``"auto"``).
    """
    loc = cfg.eval.loc_split
    if loc is None or loc == "none":
        return None
    if loc != "auto":
        _check_loc_split_name(loc)
        if loc not in LOC_SPLIT_CHOICES:
            raise ConfigError(
                f"eval.loc_split = {loc!r} is not allowed; choose null or one of: "
                f"{', '.join(LOC_SPLIT_CHOICES)}"
            )
        if loc == cfg.eval.split:
            raise ConfigError(
                f"eval.loc_split = {loc!r} is eval.split itself; name another split, 'auto' or "
                "'none'"
            )
        return loc
    if has_loc_labels(eval_info) or cfg.eval.split == "val-loc":
        return None
    if cfg.data.cache:
        have = tuple(read_manifest(cfg.data.cache)["splits"])
    else:
        have = available_splits(cfg.data.dataset, cfg.data)
    return "val-loc" if "val-loc" in have else None


@dataclass
class EvalTarget:
    """One split evaluated on rank 0 every epoch: its name, metric prefix (``val`` for
    ``eval.split``, the split's name for the localization split), loader, suite, overlays."""

    split: str
    prefix: str
    loader: Any
    suite: Any
    overlays: int


def _check_classes(ds: Any, split: str, info: DatasetInfo) -> DatasetInfo:
    """``ds.info``, refused when its classes differ from the train split's ``info``."""
    split_info: DatasetInfo = ds.info
    if tuple(split_info.classes) != tuple(info.classes):
        raise DataError(
            f"split {split!r} has classes {list(split_info.classes)} but the "
            f"train split has {list(info.classes)}"
        )
    return split_info


def setup_validation(
    cfg: RunConfig,
    datasets: tuple[Dataset[Any], ...] | None,
    info: DatasetInfo,
    dev: torch.device,
    log: Callable[[str], None],
) -> list[EvalTarget]:
    """The splits rank 0 evaluates every epoch: ``eval.split`` and the localization split
    (:func:`resolve_loc_split`), each with its loader and suite; ``datasets`` injected
    ``(train, val[, loc])`` replace those built from ``cfg.data``. Refuses an
    ``eval.select_metric`` none of them reports (before any epoch runs)."""
    val_ds: Any = datasets[1] if datasets else build_dataset(cfg.data, cfg.eval.split)
    val_info = _check_classes(val_ds, cfg.eval.split, info)
    splits: list[tuple[str, Any, DatasetInfo]] = [("val", val_ds, val_info)]
    loc_ds: Any = datasets[2] if datasets and len(datasets) > 2 else None
    auto = cfg.eval.loc_split == "auto"
    loc_split: str | None
    if datasets is None:
        loc_split = resolve_loc_split(cfg, val_info)
    elif auto:  # injected data: only an injected loc dataset, when val lacks labels
        wanted = loc_ds is not None and not has_loc_labels(val_info)
        loc_split = "val-loc" if wanted else None
    else:
        loc_split = resolve_loc_split(cfg, val_info)
    if loc_split is not None:
        if loc_ds is None:
            try:
                loc_ds = build_dataset(cfg.data, loc_split)
            except DataError as e:
                if not auto:
                    raise
                raise DataError(
                    f"{e} (eval.loc_split = 'auto' evaluates {loc_split!r} because "
                    f"{cfg.eval.split!r} has no boxes or masks; set eval.loc_split: none "
                    "to train without it)"
                ) from e
        loc_info = _check_classes(loc_ds, loc_split, info)
        if len(loc_ds) == 0 and not auto:
            raise DataError(
                f"eval.loc_split = {loc_split!r}: the split of {loc_info.name!r} is empty"
            )
        if len(loc_ds) > 0 and (has_loc_labels(loc_info) or not auto):
            splits.append((loc_split, loc_ds, loc_info))
        else:
            log(f"eval.loc_split = 'auto': {loc_split!r} is empty or unlabelled")
    # overlays: from eval.split unless only the localization split has boxes / masks
    shown = 0
    if len(splits) > 1 and not has_loc_labels(val_info):
        shown = 1
    keys = {"train/loss", "lr"}
    targets: list[EvalTarget] = []
    for j, (prefix, ds, split_info) in enumerate(splits):
        suite = LocalizationSuite(split_info, cfg.data.image_size, cfg.eval.cam_curve_interval)
        # the suite's keys depend only on the dataset info: check the selection key now
        keys |= {f"{prefix}/{k}" for k in suite.compute()} | {f"{prefix}/loss"}
        loader = make_loader(
            ds,
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.data.num_workers,
            device=dev,
        )
        n_overlays = cfg.train.log_images if j == shown else 0
        split = cfg.eval.split if j == 0 else prefix
        targets.append(EvalTarget(split, prefix, loader, suite, n_overlays))
    if cfg.eval.select_metric not in keys:
        raise ConfigError(
            f"eval.select_metric = {cfg.eval.select_metric!r} is not a reported metric; "
            f"choose one of: {', '.join(sorted(keys))}"
        )
    if len(targets) > 1:
        log(f"evaluating {cfg.eval.split!r} and {targets[1].split!r} each epoch")
    return targets


def evaluate_targets(
    model: torch.nn.Module,
    targets: list[EvalTarget],
    cfg: RunConfig,
    dev: torch.device,
    amp_dtype: torch.dtype | None,
    localize: bool,
) -> tuple[dict[str, float], list[Any]]:
    """One validation pass over every target: ``{"<prefix>/<key>": value}`` and the overlays.
    ``localize`` False computes AUROC and losses only (``eval.loc_every``)."""
    evaluated: dict[str, float] = {}
    overlays: list[Any] = []
    for j, target in enumerate(targets):
        target.suite.localize = localize
        try:
            res, items = evaluate_model(
                model,
                target.loader,
                target.suite,
                dev,
                in_chans=cfg.train.in_chans,
                channels_last=cfg.train.channels_last,
                amp_dtype=amp_dtype,
                overlays=target.overlays,
            )
        except TrainingError as e:
            if j == 0:
                raise
            raise TrainingError(f"split {target.split!r}: {e}") from e
        evaluated.update({f"{target.prefix}/{k}": v for k, v in res.items()})
        overlays.extend(items)
    return evaluated, overlays
