"""The study's comparison table (``study/final.md``): per method, mean ± std over its runs
(configs × seeds) and a 95% percentile bootstrap CI over the test images of the method's mean.

The CI resamples the images of the test split (:func:`lesionsweep.metrics.bootstrap_suite` on the
per-image outputs saved at evaluation), the same indices for every run of a method, and re-scores
every run with the suite; a run without saved outputs (a multi-stage pipeline evaluated through
its own hook) leaves the CI out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..data import build_dataset
from ..metrics import BootstrapCI, LocalizationSuite, RunOutputs, bootstrap_suite

__all__ = ["StudyRun", "HEADLINE", "format_study"]

#: (suite key, column title) of the table
HEADLINE = (
    ("auroc_macro", "AUROC"),
    ("point_acc_macro", "point acc"),
    ("iobb@0.1", "T(IoBB)0.1"),
    ("iobb@0.25", "T(IoBB)0.25"),
    ("iobb@0.5", "T(IoBB)0.5"),
    ("maxboxacc_v2", "MaxBoxAccV2"),
    ("pxap", "PxAP"),
)


@dataclass
class StudyRun:
    """One retrained run and its single test evaluation."""

    method: str
    trial_id: str
    key: str
    seed: int
    run_dir: Path
    metrics: Mapping[str, Any]
    outputs: Path | None
    config: RunConfig


def _f(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "nan"


def _method_ci(
    runs: Sequence[StudyRun], split: str, keys: Sequence[str], n_boot: int
) -> dict[str, BootstrapCI]:
    if n_boot < 1 or any(r.outputs is None for r in runs):
        return {}
    cfg = runs[0].config
    ds = build_dataset(cfg.data, split)
    samples = [ds[i] for i in range(len(ds))]
    outs = []
    for r in runs:
        with np.load(r.outputs) as z:  # type: ignore[arg-type]
            outs.append(RunOutputs(z["logits"], z["maps"], str(z["map_kind"])))
    return bootstrap_suite(
        lambda: LocalizationSuite(ds.info, cfg.data.image_size, cfg.eval.cam_curve_interval),
        samples,
        outs,
        keys,
        n_boot=n_boot,
    )


def format_study(
    runs: Sequence[StudyRun],
    split: str,
    evaluations: int,
    n_boot: int = 200,
    sweep: str = "",
    budget: Mapping[str, int] | None = None,
) -> str:
    """The markdown table (see the module docstring); ``budget``: sweep trials per method
    (an unequal split is flagged: the comparison then favours the method with more trials)."""
    by_method: dict[str, list[StudyRun]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).append(r)
    present = [(k, t) for k, t in HEADLINE if any(f"{split}/{k}" in r.metrics for r in runs)]
    lines = [
        f"# Study {sweep}: {split}",
        "",
        f"Test evaluations made: **{evaluations}** (each config × seed once; ledger "
        "`study/ledger.jsonl`). Cells: mean ± std over the method's runs (configs × seeds), "
        f"[95% bootstrap CI over the {split} images, {n_boot} resamples, of that mean].",
        "",
    ]
    if budget:
        counts = ", ".join(f"{m} {n}" for m, n in sorted(budget.items()))
        equal = len(set(budget.values())) == 1
        lines += [
            f"Sweep trials per method: {counts}"
            + (
                "."
                if equal
                else " (UNEQUAL search budget: give each method its own space with "
                "space_selection round_robin for a fair comparison)."
            ),
            "",
        ]
    lines += [
        "| method | runs | " + " | ".join(t for _, t in present) + " |",
        "|---|---:|" + "---:|" * len(present),
    ]
    for method in sorted(by_method):
        rs = by_method[method]
        ci = _method_ci(rs, split, [k for k, _ in present], n_boot)
        cells = []
        for k, _ in present:
            vals = np.asarray(
                [
                    float(r.metrics[f"{split}/{k}"])
                    for r in rs
                    if r.metrics.get(f"{split}/{k}") is not None
                ],
                dtype=np.float64,
            )
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                cells.append("-")
                continue
            std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
            cell = f"{_f(float(vals.mean()))} ± {_f(std)}"
            if k in ci and ci[k].n:
                cell += f" [{_f(ci[k].low)}, {_f(ci[k].high)}]"
            cells.append(cell)
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += ["", "| method | trial | seed | config | run |", "|---|---|---:|---|---|"]
    for r in runs:
        lines.append(f"| {r.method} | {r.trial_id} | {r.seed} | {r.key} | {r.run_dir} |")
    return "\n".join(lines) + "\n"
