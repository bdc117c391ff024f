"""A sweep prepares its data once: one cache per reachable data config, built atomically under a
lock, reused by later sweeps, refused when it does not match; every trial points at it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lesionsweep.cli import main
from lesionsweep.config import DataConfig
from lesionsweep.data import CachedDataset, build_cache
from lesionsweep.data.cache_store import BuildProgress, ensure_cache
from lesionsweep.data.phantom import PhantomDataset
from lesionsweep.data.phantom import dataset as phantom_module
from lesionsweep.errors import ConfigError, DataError
from lesionsweep.sweep.datacache import STORE_FOLDER, prepare_sweep_data, reachable_configs
from lesionsweep.sweep.datakey import data_key
from lesionsweep.sweep.spaces import RandomSuggester
from lesionsweep.sweep.spec import build_trial_config, load_spec, spec_from_dict
from lesionsweep.training import run_training

N_TRAIN, N_VAL = 12, 6
OPTIONS = {"num_train": N_TRAIN, "num_val": N_VAL}
PY = sys.executable


def _spec(tmp_path: Path, **over: Any) -> Any:
    body: dict[str, Any] = {
        "name": "dc",
        "data": {"dataset": "phantom", "options": dict(OPTIONS)},
        "base": {"method.backbone": "test_resnet", "train.epochs": 1},
        "spaces": [
            {  # two image sizes: two data configs
                "name": "varied",
                "base": {"method.name": "cam"},
                "parameters": {
                    "data.image_size": {"choice": [64, 128]},
                    "optim.lr": {"float": [1e-3, 1e-2], "log": True},
                },
            },
            {  # pins 64: the same data config as one of the above
                "name": "pinned",
                "base": {"method.name": "cam", "data.image_size": 64},
                "parameters": {"optim.lr": {"const": 1e-3}},
            },
        ],
        "budget": {"trials": 6},
        "storage": str(tmp_path / "sweeps"),
    }
    body.update(over)
    return spec_from_dict(body)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every phantom render in this process, as ``(stream, index)``."""
    seen: list[tuple[int, int]] = []
    real = phantom_module._render

    def counted(spec: Any, stream: int, index: int) -> Any:
        seen.append((stream, index))
        return real(spec, stream, index)

    monkeypatch.setattr(phantom_module, "_render", counted)
    return seen


def test_one_cache_per_data_config_and_every_trial_points_at_it(
    tmp_path: Path, renders: list[tuple[int, int]]
) -> None:
    spec = _spec(tmp_path)
    assert len(reachable_configs(spec)) == 3  # 64 and 128 from "varied", 64 from "pinned"
    out = prepare_sweep_data(spec, spec.location.root, progress=False)
    store = Path(spec.location.root) / STORE_FOLDER
    assert len(out.data_caches) == 2
    assert sorted(p.name for p in store.iterdir() if p.is_dir()) == sorted(out.data_caches)
    # each image of each data config rendered exactly once (not once per trial)
    assert len(renders) == 2 * (N_TRAIN + N_VAL)
    assert len(set(renders)) == N_TRAIN + N_VAL  # the same indices at both sizes

    trial = RandomSuggester(0)
    sizes = set()
    for n in range(out.budget.trials):
        name, params = out.spaces.sample(trial, n)
        cfg = build_trial_config(out, name, params)
        assert cfg.data.cache == out.data_caches[data_key(cfg.data)]
        assert CachedDataset(cfg.data.cache, "train").info.image_size == cfg.data.image_size
        sizes.add(cfg.data.image_size)
    assert sizes == {64, 128}

    # the cache delivers the phantom's items exactly
    cfg64 = next(c for c in reachable_configs(out) if c.data.image_size == 64).data
    cached = CachedDataset(out.data_caches[data_key(cfg64)], "val")
    live = PhantomDataset("val", image_size=64, **OPTIONS)
    for i in (0, N_VAL - 1):
        torch.testing.assert_close(cached[i].image, live[i].image, rtol=0, atol=0)
        torch.testing.assert_close(cached[i].masks, live[i].masks, rtol=0, atol=0)
        torch.testing.assert_close(cached[i].boxes, live[i].boxes)
    renders.clear()

    # a second sweep on the same store (a user-level data_cache folder) reuses the entries
    shared = _spec(tmp_path, name="dc2", data_cache=str(store))
    again = prepare_sweep_data(shared, shared.location.root, progress=False)
    assert renders == []
    assert again.data_caches == out.data_caches


def test_a_named_cache_that_does_not_match_is_refused(tmp_path: Path) -> None:
    named = build_cache(
        DataConfig(dataset="phantom", image_size=64, options=OPTIONS), tmp_path / "named"
    )
    ok = _spec(tmp_path, data={"dataset": "phantom", "options": OPTIONS, "cache": str(named)})
    ok = spec_from_dict({**ok.to_dict(), "spaces": [ok.to_dict()["spaces"][1]]})
    assert prepare_sweep_data(ok, ok.location.root, progress=False).data_caches == {}
    bad = _spec(tmp_path, data={"dataset": "phantom", "options": OPTIONS, "cache": str(named)})
    with pytest.raises(DataError, match="image_size 64, the config asks for 128"):
        prepare_sweep_data(bad, bad.location.root, progress=False)


def test_a_store_entry_built_for_other_data_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    out = prepare_sweep_data(spec, spec.location.root, progress=False)
    entry = Path(next(iter(out.data_caches.values())))
    m = json.loads((entry / "manifest.json").read_text())
    m["source"]["options"]["num_train"] = 999
    (entry / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"does not match the data config.*num_train"):
        prepare_sweep_data(spec, spec.location.root, progress=False)


def test_a_missing_split_is_added_to_an_existing_entry(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="phantom", image_size=64, options=OPTIONS)
    entry, built = ensure_cache(cfg, tmp_path, "k", ["train"], OPTIONS)
    assert built and list(json.loads((entry / "manifest.json").read_text())["splits"]) == ["train"]
    entry, built = ensure_cache(cfg, tmp_path, "k", ["val", "train"], OPTIONS)
    assert built and set(json.loads((entry / "manifest.json").read_text())["splits"]) == {
        "train",
        "val",
    }
    assert ensure_cache(cfg, tmp_path, "k", ["val"], OPTIONS) == (entry, False)


def test_an_interrupted_build_leaves_nothing_half_written(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="phantom", image_size=64, options=OPTIONS)

    def stop(split: str, done: int, total: int) -> None:
        if split == "val" and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_cache(cfg, tmp_path, "k", ["train", "val"], OPTIONS, progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock"]
    entry, built = ensure_cache(cfg, tmp_path, "k", ["train", "val"], OPTIONS)
    assert built and len(CachedDataset(entry, "val")) == N_VAL


_BUILDER = """
import sys, time
from lesionsweep.config import DataConfig
from lesionsweep.data.phantom import dataset as phantom
from lesionsweep.data.cache_store import ensure_cache

store, mode = sys.argv[1], sys.argv[2]
real, n = phantom._render, [0]
def counted(*a):
    n[0] += 1
    return real(*a)
phantom._render = counted
def slow(split, done, total):
    if mode == "hang" and split == "val" and done == 3:
        open(store + ".hung", "w").close()
        time.sleep(600)
    time.sleep(0.02)  # so two builders overlap
opts = {"num_train": N_TRAIN, "num_val": N_VAL}
cfg = DataConfig(dataset="phantom", image_size=64, options=opts)
entry, built = ensure_cache(cfg, store, "k", ["train", "val"], opts, progress=slow)
print("built" if built else "reused", n[0])
""".replace("N_TRAIN", str(N_TRAIN)).replace("N_VAL", str(N_VAL))


def _builder(store: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-c", _BUILDER, str(store), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_a_killed_build_leaves_no_cache_and_the_next_build_cleans_up(tmp_path: Path) -> None:
    store = tmp_path / "store"
    p = _builder(store, "hang")
    deadline = time.monotonic() + 120
    while not Path(str(store) + ".hung").exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    left = sorted(x.name for x in store.iterdir())
    assert "k" not in left and any(x.startswith(".k.tmp-") for x in left), left
    with pytest.raises(DataError, match="not found"):
        CachedDataset(store / "k", "train")
    cfg = DataConfig(dataset="phantom", image_size=64, options=OPTIONS)
    entry, built = ensure_cache(cfg, store, "k", ["train", "val"], OPTIONS)
    assert built and len(CachedDataset(entry, "train")) == N_TRAIN
    assert sorted(x.name for x in store.iterdir()) == ["k", "k.lock"]


def test_two_concurrent_builders_make_one_cache(tmp_path: Path) -> None:
    store = tmp_path / "store"
    procs = [_builder(store, "ok") for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        outs.append(out.split())
    assert sorted(o[0] for o in outs) == ["built", "reused"]
    assert sum(int(o[1]) for o in outs) == N_TRAIN + N_VAL  # the waiter rendered nothing
    assert sorted(x.name for x in store.iterdir()) == ["k", "k.lock"]
    assert len(CachedDataset(store / "k", "val")) == N_VAL


def test_progress_reports_rate_and_eta() -> None:
    buf = io.StringIO()
    p = BuildProgress("cache x", stream=buf, every_s=0.0)
    for i in range(1, 5):
        p("train", i, 4)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4
    assert "train 1/4 images" in lines[0] and "img/s, ETA" in lines[0]
    assert lines[-1].startswith("cache x: train 4/4 images") and "done in" in lines[-1]


def test_ranges_over_data_settings_fall_back_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(
        tmp_path,
        spaces=[
            {
                "name": "r",
                "base": {"method.name": "cam"},
                "parameters": {"data.image_size": {"int": [64, 512], "step": 1}},
            }
        ],
    )
    assert reachable_configs(spec) is None
    assert prepare_sweep_data(spec, spec.location.root).data_caches == {}
    assert "cannot be listed in advance" in capsys.readouterr().err
    none = _spec(tmp_path, data_cache="none")
    assert prepare_sweep_data(none, none.location.root).data_caches == {}
    assert not (Path(none.location.root) / STORE_FOLDER).exists()


def test_the_cli_refuses_a_mismatched_cache_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = build_cache(
        DataConfig(dataset="phantom", image_size=64, options=OPTIONS), tmp_path / "named"
    )
    body = _spec(tmp_path, data={"dataset": "phantom", "options": OPTIONS, "cache": str(named)})
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(body.to_dict()))
    assert main(["sweep", str(spec_file), "--quiet", "--num-cpus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lesionsweep: error: cache ") and "image_size 64" in err
    assert "Traceback" not in err
    assert not (Path(body.location.root) / "tuner.pkl").exists()  # no trial started


@pytest.mark.parametrize(
    ("value", "match"),
    [(3, "expected 'sweep', 'none' or a folder"), ("s3://b/cache", "not a URI")],
)
def test_a_bad_data_cache_setting_is_refused(tmp_path: Path, value: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=f"data_cache: .*{match}"):
        _spec(tmp_path, data_cache=value)


def test_a_shortcut_study_trial_on_the_sweep_cache_scores_as_on_the_live_phantom(
    tmp_path: Path,
) -> None:
    spec = load_spec(
        None,
        {
            "spaces": ["shortcut_study"],
            "data.image_size": 64,
            "data.options": {"num_train": 16, "num_val": 16},
            "base.method.backbone": "test_resnet",
            "base.train.epochs": 1,
            "base.train.log_images": 0,
            "early_stopping": "none",
            "storage": str(tmp_path / "sweeps"),
        },
    )
    prepared = prepare_sweep_data(spec, spec.location.root, progress=False)
    assert len(prepared.data_caches) == 3  # one per searched confounder_prob
    space = spec.spaces.by_name("shortcut_study")
    draws = (space.sample(RandomSuggester(seed)) for seed in range(50))
    params = next(p for p in draws if p["method.name"] == "cam" and p["method.pooling"] == "gap")
    cached = build_trial_config(prepared, "shortcut_study", params)
    live = build_trial_config(spec, "shortcut_study", params)
    assert cached.data.cache is not None and live.data.cache is None
    a = run_training(cached, tmp_path / "cached").final
    b = run_training(live, tmp_path / "live").final
    for key in ("val/shortcut_pointing", "val/shortcut_energy", "val/auroc_macro"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
