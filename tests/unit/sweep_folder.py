"""Build a sweep folder like the sweep driver writes it, without Ray: ``sweep.yaml`` from a real
spec, and ``trials.parquet`` / ``epochs.parquet`` through :class:`ResultsStore`. A trial can be
a real run (``run_training``) whose metrics become its rows, or a row with given values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from lesionsweep.config import RunConfig
from lesionsweep.sweep.results import EpochRecord, TrialRecord
from lesionsweep.sweep.spec import spec_from_dict
from lesionsweep.sweep.storage import SweepLocation
from lesionsweep.sweep.store import ResultsStore, write_epoch_fragment
from lesionsweep.training import run_training

SPACE = {
    "name": "cam",
    "base": {"method.name": "cam"},
    "parameters": {
        "method.pooling": {"choice": ["gap", "lse", "pcam"]},
        "optim.lr": {"float": [1e-4, 1e-1], "log": True},
    },
}


def write_spec(storage: Path, name: str, metrics: Sequence[str], modes: Sequence[str]) -> Path:
    raw = {
        "name": name,
        "spaces": [SPACE],
        "objective": {"metrics": list(metrics), "modes": list(modes)},
        "storage": str(storage),
        "budget": {"trials": 8},
    }
    spec = spec_from_dict(raw, source="<test>")
    root = storage / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return root


def trial(
    trial_id: str,
    status: str,
    params: Mapping[str, Any],
    curve: Sequence[Mapping[str, float]],
    method: str = "cam",
    config: RunConfig | None = None,
    run_dir: str = "",
) -> tuple[TrialRecord, list[EpochRecord]]:
    """A trial row and its epoch rows from a per-epoch metrics list."""
    epochs = [
        EpochRecord(trial_id, "cam", method, i + 1, elapsed_s=float(i), metrics=dict(m))
        for i, m in enumerate(curve)
    ]
    rec = TrialRecord(
        trial_id=trial_id,
        status=status,
        space="cam",
        method=method,
        epochs_run=len(curve),
        best_epoch=len(curve) or None,
        params=dict(params),
        final=dict(curve[-1]) if curve else {},
        best=dict(curve[-1]) if curve else {},
        config_json=json.dumps(config.to_dict()) if config is not None else "{}",
        run_dir=run_dir,
    )
    return rec, epochs


def real_trial(
    root: Path, trial_id: str, cfg: RunConfig, params: Mapping[str, Any]
) -> tuple[TrialRecord, list[EpochRecord]]:
    """Train ``cfg`` into ``root/runs/<trial_id>`` and return its rows (status completed)."""
    run_dir = root / "runs" / trial_id
    run_training(cfg, run_dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    curve = [
        {k: float(v) for k, v in ln.items() if isinstance(v, (int, float)) and "/" in k}
        for ln in lines
    ]
    return trial(trial_id, "completed", params, curve, cfg.method.name, cfg, str(run_dir))


def write_tables(root: Path, rows: Sequence[tuple[TrialRecord, list[EpochRecord]]]) -> None:
    loc = SweepLocation.parse(root)
    store = ResultsStore(loc, root.name, {})
    for rec, eps in rows:
        store.upsert_trial(rec)
        write_epoch_fragment(loc, root.name, rec.trial_id, eps)
    store.flush(force=True)
