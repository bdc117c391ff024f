"""``lesionsweep study SPEC``: the WSOL protocol end to end (Choe et al., CVPR 2020).

1. **Select**: the sweep of SPEC (resumed if its folder exists and is unfinished; every method
   gets the budget the spec gives it, e.g. ``space_selection: round_robin``), ranked on the
   validation objective (the sweep's own objective, final epoch).
2. **Retrain**: the top ``top_k`` completed configs of each method, each with ``seeds`` new seeds
   (``train.seed = 1000 + i``), through :func:`lesionsweep.training.run_training` into
   ``<sweep>/study/runs/<trial_id>/seed<seed>/``.
3. **Test once**: each retrained run evaluated on ``test-loc`` through
   :func:`lesionsweep.training.evaluate` (the only path to a test split), last checkpoint (the
   protocol's choice; selection already happened on validation). The test split stays sealed: a
   ledger ``study/ledger.jsonl`` records every test evaluation (config hash, seed, time), a
   config evaluated before is never evaluated again (its recorded result is reused; without it
   the study refuses) unless ``force``; the table states how many evaluations were made.
4. **Report**: ``study/final.parquet`` (one row per method × config × seed, every
   ``test-loc/...`` metric) and ``study/final.md`` (:mod:`.study_table`).

Re-running the same command continues: the sweep resumes, finished retrains (``done.json``) and
recorded evaluations are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import RunConfig, config_from_dict, merge_flat
from ..data import available_splits
from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..training import evaluate, run_training
from .commands import resume_sweep, run_sweep
from .export import SPEC_FILE, select_trials, standalone_config
from .results import TRIALS_FILE, read_table
from .spec import load_spec, parse_overrides
from .storage import SweepLocation
from .study_table import StudyRun, format_study

__all__ = ["StudyResult", "run_study", "STUDY_DIR", "TEST_SPLIT", "SEED_BASE"]

STUDY_DIR = "study"
TEST_SPLIT = "test-loc"
SEED_BASE = 1000
_FINISHED = ("completed", "pruned", "stopped", "failed")


@dataclass
class StudyResult:
    """What a study wrote: the table text, its files and the number of test evaluations."""

    root: Path
    parquet: Path
    markdown: Path
    table: str
    evaluations: int
    runs: list[StudyRun]


def config_key(cfg: RunConfig) -> str:
    """A config's identity for the ledger: sha256 of its resolved dict (seed included)."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Ledger:
    """``study/ledger.jsonl``: one JSON line per test evaluation, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.entries.append(json.loads(line))

    def has(self, key: str) -> bool:
        return any(e["key"] == key for e in self.entries)

    def record(self, entry: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(entry), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(dict(entry))


def _log(progress: bool, text: str) -> None:
    if progress:
        print(f"study: {text}", file=sys.stderr, flush=True)


def _ensure_sweep(
    spec_path: str | Path | None,
    overrides: Mapping[str, Any],
    budget: int,
    root: Path,
    num_cpus: int | None,
    progress: bool,
) -> None:
    """Run the sweep, or resume it when its folder exists and it has not finished."""
    if not (root / SPEC_FILE).is_file():
        _log(progress, f"step 1/4: sweep into {root}")
        run_sweep(spec_path, overrides, progress=progress, num_cpus=num_cpus)
        return
    try:
        rows = read_table_rows(root)
    except ConfigError:
        rows = []  # no trial recorded yet
    done = sum(1 for r in rows if r["status"] in _FINISHED)
    if done >= budget and len(rows) == done:
        _log(progress, f"step 1/4: sweep {root} already finished ({done} trials)")
        return
    _log(progress, f"step 1/4: resuming sweep {root} ({done}/{budget} trials finished)")
    resume_sweep(root, progress=progress, num_cpus=num_cpus)


def read_table_rows(root: Path) -> list[dict[str, Any]]:
    return read_table(SweepLocation.parse(root), TRIALS_FILE).to_pylist()


def _selected(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, top_k: int) -> list[Any]:
    out: list[Any] = []
    for method in sorted({r["method"] for r in rows}):
        sub = [r for r in rows if r["method"] == method]
        out.extend(select_trials(sub, metric, mode, top_k))
    return out


def _retrain(cfg: RunConfig, run_dir: Path, progress: bool) -> None:
    done = run_dir / "done.json"
    if done.is_file():
        return
    res = run_training(cfg, run_dir, resume=True, progress=False)
    atomic_write_text(
        done, json.dumps({"best_epoch": res.best_epoch, "wall_time_s": res.wall_time_s}) + "\n"
    )
    _log(progress, f"retrained {run_dir} in {res.wall_time_s:.1f} s")


def run_study(
    spec_path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    seeds: int = 3,
    top_k: int = 1,
    force: bool = False,
    num_cpus: int | None = None,
    progress: bool = True,
    n_boot: int = 200,
    device: str = "auto",
) -> StudyResult:
    """Run (or continue) the protocol; see the module docstring.

    Args:
        spec_path: the sweep spec (None: the demo).
        overrides: spec overrides (``["budget.trials=4"]`` or a mapping).
        seeds: retraining seeds per selected config (>= 1).
        top_k: configs per method (>= 1).
        force: evaluate configs on the test split again even if the ledger has them.
        num_cpus: logical CPUs of a local Ray for the sweep.
        n_boot: bootstrap resamples for the confidence intervals.
        device: device for retraining-evaluation (``auto``, ``cpu``, ``cuda``).

    Raises:
        ConfigError: bad arguments, a dataset without a ``test-loc`` split, a non-local sweep
            folder, no completed trial, or a config already evaluated whose result is lost.
    """
    if seeds < 1 or top_k < 1:
        raise ConfigError(f"--seeds and --top-k must be >= 1, got {seeds} and {top_k}")
    flat: dict[str, Any] = (
        dict(overrides)
        if isinstance(overrides, Mapping)
        else parse_overrides(list(overrides or []))
    )
    spec = load_spec(spec_path, flat)
    dataset = str(spec.context().get("data.dataset", "phantom"))
    if TEST_SPLIT not in available_splits(dataset):
        raise ConfigError(
            f"study: dataset {dataset!r} has no {TEST_SPLIT!r} split (splits: "
            f"{', '.join(available_splits(dataset))}); the protocol needs localization labels"
        )
    local = spec.location.local_path
    if local is None:
        raise ConfigError(f"study: {spec.location.root} is not a local folder")
    _ensure_sweep(spec_path, flat, spec.budget.trials, local, num_cpus, progress)

    rows = read_table_rows(local)
    selected = _selected(rows, spec.objective.metric, spec.objective.mode, top_k)
    if not selected:
        raise ConfigError(f"study: sweep {local} has no completed trial to retrain")
    study = local / STUDY_DIR
    ledger = Ledger(study / "ledger.jsonl")
    runs: list[StudyRun] = []
    for rank_row in selected:
        base = standalone_config(SweepLocation.parse(local), rank_row)
        for i in range(seeds):
            seed = SEED_BASE + i
            cfg = config_from_dict(merge_flat(base.to_dict(), {"train.seed": seed}, "study"))
            run_dir = study / "runs" / rank_row["trial_id"] / f"seed{seed}"
            _log(progress, f"step 2/4: {rank_row['method']} {rank_row['trial_id']} seed {seed}")
            _retrain(cfg, run_dir, progress)
            key = config_key(cfg)
            result = study / "results" / f"{key}.json"
            outputs = study / "outputs" / f"{key}.npz"
            if ledger.has(key) and not force:
                if not result.is_file():
                    raise ConfigError(
                        f"study: config {key} ({rank_row['trial_id']} seed {seed}) was already "
                        f"evaluated on {TEST_SPLIT} (see {ledger.path}) and its result "
                        f"{result} is gone; evaluating it again needs --force"
                    )
            else:
                _log(progress, f"step 3/4: evaluating {run_dir} on {TEST_SPLIT} (once)")
                evaluate(
                    run_dir,
                    TEST_SPLIT,
                    out_path=result,
                    which="last",
                    device=device,
                    outputs_path=outputs,
                )
                ledger.record(
                    {
                        "key": key,
                        "method": rank_row["method"],
                        "trial_id": rank_row["trial_id"],
                        "seed": seed,
                        "split": TEST_SPLIT,
                        "run_dir": str(run_dir),
                        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "forced": bool(force and ledger.has(key)),
                    }
                )
            metrics = json.loads(result.read_text())["metrics"]
            runs.append(
                StudyRun(
                    method=rank_row["method"],
                    trial_id=rank_row["trial_id"],
                    key=key,
                    seed=seed,
                    run_dir=run_dir,
                    metrics={k: v for k, v in metrics.items() if k.startswith(f"{TEST_SPLIT}/")},
                    outputs=outputs if outputs.is_file() else None,
                    config=cfg,
                )
            )
    _log(progress, "step 4/4: final table")
    parquet = study / "final.parquet"
    _write_parquet(parquet, runs)
    per_method: dict[str, int] = {}
    for r in rows:
        per_method[r["method"]] = per_method.get(r["method"], 0) + 1
    table = format_study(
        runs, TEST_SPLIT, len(ledger.entries), n_boot=n_boot, sweep=spec.name, budget=per_method
    )
    markdown = study / "final.md"
    atomic_write_text(markdown, table)
    return StudyResult(local, parquet, markdown, table, len(ledger.entries), runs)


def _write_parquet(path: Path, runs: Sequence[StudyRun]) -> None:
    keys = sorted({k for r in runs for k in r.metrics})
    cols: dict[str, list[Any]] = {
        "method": [r.method for r in runs],
        "trial_id": [r.trial_id for r in runs],
        "config_key": [r.key for r in runs],
        "seed": [r.seed for r in runs],
        "run_dir": [str(r.run_dir) for r in runs],
    }
    for k in keys:
        cols[k] = [None if r.metrics.get(k) is None else float(r.metrics[k]) for r in runs]
    schema = pa.schema(
        [pa.field(c, pa.int64() if c == "seed" else pa.string()) for c in list(cols)[:5]]
        + [pa.field(k, pa.float64()) for k in keys]
    )
    table = pa.table(cols, schema=schema)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
