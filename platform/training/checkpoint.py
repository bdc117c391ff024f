"""Checkpoint files that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only:

``{"format": 1, "epoch": int, "model": state_dict, "optimizer": state_dict,
"schedule": dict, "scaler": state_dict | None, "history": list[dict[str, float]],
"best": {"epoch": int, "value": float} | None, "rng": dict, "config": dict}``

``config`` is :meth:`RunConfig.to_dict` (reload with ``config_from_dict``). RNG states are stored
as tensors and numbers (numpy's and Python's state tuples are converted), so no pickled object
is ever needed. Files are written atomically (temp file + rename).

Checkpoint policy (``train.keep_checkpoint`` / ``train.keep_resumable``): only the *resumable*
``checkpoints/last.pt`` holds the optimizer, schedule, scaler and RNG states (for resnet18 with
Adam, ~3x the weights); ``best.pt`` is weights-only (:func:`weights_only`: ``format``, ``epoch``,
``model``, ``history``, ``best``, ``config``, ``weights_only: True``), and so is a kept
``last.pt`` once the run is over. :func:`finalize_checkpoints` applies the policy when a run
ends; the sweep calls it for trials stopped early too. Every file loads with
:func:`load_checkpoint`; ``lesionsweep evaluate`` needs only ``model`` and ``config``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TrainingError
from ..io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "unwrap_model",
    "weights_only",
    "finalize_checkpoints",
    "KEEP_CHOICES",
]

#: values of ``train.keep_checkpoint``
KEEP_CHOICES = ("best", "last", "none")
_RESUME_ONLY = ("optimizer", "schedule", "scaler", "rng")

CHECKPOINT_FORMAT = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically."""

    def _w(tmp: str) -> None:
        torch.save(state, tmp)

    atomic_write(Path(path), _w)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        TrainingError: the file is missing, unreadable or not a lesionsweep checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise TrainingError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"{p}: not a lesionsweep checkpoint (format {CHECKPOINT_FORMAT} expected)"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), numpy and Python RNG states as tensors and numbers."""
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss": py_state[2],
        },
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when CUDA is in use)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def weights_only(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint ``state`` without its resume-only parts (optimizer, schedule, scaler, RNG)."""
    out = {k: v for k, v in state.items() if k not in _RESUME_ONLY}
    out["weights_only"] = True
    return out


def finalize_checkpoints(
    ckpt_dir: str | Path, keep: str = "best", keep_resumable: bool = False
) -> dict[str, int]:
    """Apply the checkpoint policy to a finished (or stopped) run's ``checkpoints/`` folder.

    Args:
        ckpt_dir: the run's ``checkpoints`` folder (missing files are fine).
        keep: ``best`` keeps ``best.pt``; ``last`` keeps ``last.pt``, rewritten weights-only
            unless ``keep_resumable``; ``none`` keeps neither.
        keep_resumable: also keep the resumable ``last.pt`` as it is.

    Returns:
        ``{file name: bytes}`` of the checkpoint files left (empty when none).

    Raises:
        TrainingError: ``keep`` is not one of :data:`KEEP_CHOICES`.
    """
    if keep not in KEEP_CHOICES:
        raise TrainingError(f"keep_checkpoint = {keep!r}; choose one of {', '.join(KEEP_CHOICES)}")
    d = Path(ckpt_dir)
    last, best = d / "last.pt", d / "best.pt"
    if keep != "best":
        best.unlink(missing_ok=True)
    if last.is_file() and not keep_resumable:
        if keep == "last":
            state = load_checkpoint(last)
            if not state.get("weights_only"):
                save_checkpoint(last, weights_only(state))
        else:
            last.unlink()
    return {p.name: p.stat().st_size for p in (best, last) if p.is_file()}
