"""Bootstrap over images: the per-image additive contributions reproduce the suite exactly, a
resample equals scoring the drawn images (duplicates included), and the interval brackets the
full-data value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lesionsweep.config import DataConfig
from lesionsweep.data import build_dataset
from lesionsweep.data.types import collate
from lesionsweep.metrics import LocalizationSuite, RunOutputs, bootstrap_suite
from lesionsweep.metrics.bootstrap import ImageContributions


@pytest.fixture(scope="module")
def split() -> tuple[list, object]:
    ds = build_dataset(
        DataConfig(dataset="phantom", image_size=64, options={"num_test": 14}), "test-loc"
    )
    return [ds[i] for i in range(len(ds))], ds.info


def _outputs(n: int, k: int, seed: int) -> RunOutputs:
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, k, 6, 6)).astype(np.float32)
    return RunOutputs(rng.normal(size=(n, k)).astype(np.float32), maps, "logits")


def _suite(info: object) -> LocalizationSuite:
    return LocalizationSuite(info, 64, cam_curve_interval=0.05)  # type: ignore[arg-type]


def _scored(info: object, samples: list, run: RunOutputs, idx: np.ndarray) -> dict[str, float]:
    s = _suite(info)
    for part in np.array_split(idx, 3):
        s.accumulate(
            torch.from_numpy(run.logits[part]),
            torch.from_numpy(run.maps[part]),
            collate([samples[i] for i in part]),
            run.map_kind,
        )
    return s.compute()


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    bad = {k: (a[k], b[k]) for k in a if not np.isclose(a[k], b[k], rtol=1e-9, equal_nan=True)}
    assert not bad


def test_contributions_reproduce_full_and_resampled_scoring(split: tuple) -> None:
    samples, info = split
    run = _outputs(len(samples), info.num_classes, 0)
    contrib = ImageContributions(_suite(info), samples, run)
    everything = np.arange(len(samples))
    full = _scored(info, samples, run, everything)
    assert {"auroc_macro", "iobb@0.5", "maxboxacc_v2", "pxap", "point_acc_macro"} <= full.keys()
    _same(contrib.compute(everything), full)
    draw = np.random.default_rng(1).integers(0, len(samples), size=len(samples))
    assert len(set(draw.tolist())) < len(samples)  # duplicates and gaps
    _same(contrib.compute(draw), _scored(info, samples, run, draw))


def test_interval_brackets_the_mean_of_runs(split: tuple) -> None:
    samples, info = split
    runs = [_outputs(len(samples), info.num_classes, s) for s in (2, 3)]
    ci = bootstrap_suite(lambda: _suite(info), samples, runs, ["auroc_macro", "pxap"], n_boot=60)
    for key in ("auroc_macro", "pxap"):
        mean = np.mean([_scored(info, samples, r, np.arange(len(samples)))[key] for r in runs])
        assert ci[key].n == 60 and ci[key].low < ci[key].high
        assert ci[key].low <= mean <= ci[key].high
    with pytest.raises(ValueError, match="outputs for 3 images"):
        bootstrap_suite(lambda: _suite(info), samples, [_outputs(3, 5, 0)], ["pxap"])
    assert not math.isnan(ci["pxap"].low)
