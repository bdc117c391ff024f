"""Which config values each WSMIS stage depends on, and the check that a run folder is current."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...config import load_config
from ...errors import ConfigError
from ..evaluate import json_safe

__all__ = ["STAGE_KNOBS", "VOLATILE_KEYS", "fingerprint", "check_stage3_current"]

# config keys (flat) each stage depends on, on top of every method knob it reads
STAGE_KNOBS: dict[int, tuple[str, ...]] = {
    1: (
        "backbone", "pretrained", "in_chans", "drop_prob", "block_size",
        "dropblock_warmup_steps", "cam_kind", "cam_threshold",
    ),
    2: (
        "ir_labels", "conf_fg", "conf_bg", "ir_backbone", "radius", "beta",
        "exp_times", "rw_radius", "bg_threshold", "stage2_epochs", "stage2_lr",
    ),
    3: ("seg_encoder_init", "stage3_epochs", "stage3_lr"),
}  # fmt: skip
VOLATILE_KEYS = {"train.device", "train.log_images", "data.num_workers", "data.root", "data.cache"}


def fingerprint(flat: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """The config values stages ``1..stage`` depend on (flat keys), in the JSON form stored in
    ``done.json`` (lists for tuples, ``None`` for non-finite floats), so it compares equal to
    what is read back."""

    keys = [k for k in flat if not k.startswith(("method.", "eval.")) and k not in VOLATILE_KEYS]
    keys.append("eval.split")
    for s in range(1, stage + 1):
        keys += [f"method.{k}" for k in STAGE_KNOBS[s]]
    values = json_safe({k: flat.get(k) for k in sorted(set(keys))})
    return json.loads(json.dumps(values, default=str, allow_nan=False))


def check_stage3_current(run: Path) -> None:
    """Refuse a run folder whose stage 3 is unfinished or stale against its ``config.yaml``."""

    done = run / "stage3" / "done.json"
    try:
        d = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(
            f"evaluate: {run}: stage 3 is not finished (stage3/done.json missing or unreadable); "
            "run or resume the pipeline first"
        ) from None
    stored = load_config(run / "config.yaml")
    if d.get("fingerprint") != fingerprint(stored.to_flat(), 3):
        raise ConfigError(
            f"evaluate: {run}: stage3/segmenter.pt was trained with another config than "
            f"{run / 'config.yaml'} (a re-run with changed knobs did not finish); resume the "
            "pipeline first"
        )
