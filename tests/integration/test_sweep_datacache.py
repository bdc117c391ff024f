"""End to end: a sweep of several Ray trials renders each phantom image once (the driver's cache
build), where without the cache every trial renders the whole dataset again.

Renders are counted across processes: a ``sitecustomize`` on ``PYTHONPATH`` (inherited by the
local Ray cluster's worker processes) wraps ``lesionsweep.data.phantom.dataset._render`` when
that module is imported and appends ``pid stream index`` to a log file for every render.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

N_TRAIN, N_VAL, TRIALS = 24, 12, 3

_HOOK = """
import importlib.abc, importlib.util, os, sys

class _CountRenders(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "lesionsweep.data.phantom.dataset":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            render, log = module._render, os.environ["LS_RENDER_LOG"]

            def counted(s, stream, index):
                with open(log, "a") as f:
                    f.write(f"{os.getpid()} {stream} {index}\\n")
                return render(s, stream, index)

            module._render = counted

        spec.loader.exec_module = exec_module
        return spec

if os.environ.get("LS_RENDER_LOG"):
    sys.meta_path.insert(0, _CountRenders())
"""


def _sweep(tmp_path: Path, name: str, data_cache: str) -> tuple[list[tuple[int, int, int]], Path]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_HOOK)
    log = tmp_path / f"{name}.renders"
    spec = {
        "name": name,
        "data": {
            "dataset": "phantom",
            "image_size": 64,
            "options": {"num_train": N_TRAIN, "num_val": N_VAL},
        },
        "base": {
            "method.name": "cam",
            "method.backbone": "test_resnet",
            "train.epochs": 2,
            "train.batch_size": 12,
            "train.log_images": 0,
            "train.device": "cpu",
            "eval.batch_size": 12,
        },
        "spaces": [{"name": "lr", "parameters": {"optim.lr": {"float": [1e-3, 1e-2]}}}],
        "budget": {"trials": TRIALS},
        "concurrency": 2,
        "storage": str(tmp_path / "sweeps"),
        "data_cache": data_cache,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        "LS_RENDER_LOG": str(log),
        "OMP_NUM_THREADS": "1",
    }
    cli = Path(sys.executable).parent / "lesionsweep"
    r = subprocess.run(
        [str(cli), "sweep", str(path), "--num-cpus", "2", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    lines = log.read_text().splitlines() if log.exists() else []
    rows = [tuple(map(int, ln.split())) for ln in lines]
    return rows, tmp_path / "sweeps" / name  # type: ignore[return-value]


def test_a_sweep_renders_each_phantom_image_once(tmp_path: Path) -> None:
    rows, root = _sweep(tmp_path, "cached", "sweep")
    assert len(rows) == N_TRAIN + N_VAL  # the dataset's size, not trials x dataset size
    assert len({(s, i) for _, s, i in rows}) == N_TRAIN + N_VAL
    assert len({pid for pid, _, _ in rows}) == 1  # all in the driver's cache build
    t = pq.read_table(root / "trials.parquet").to_pylist()
    assert len(t) == TRIALS and all(r["status"] == "completed" for r in t)
    caches = {json.loads(r["config_json"])["data"]["cache"] for r in t}
    assert len(caches) == 1
    (cache,) = caches
    assert Path(cache).parent == root / "data-cache"
    assert (Path(cache) / "manifest.json").is_file()
    # the exported config reads the dataset (the sweep cache lacks the test split)
    best = yaml.safe_load((root / "exports" / "best.yaml").read_text())
    assert best["data"].get("cache") is None and best["data"]["image_size"] == 64

    # the same sweep without the cache: every trial renders the whole dataset itself
    rows, _ = _sweep(tmp_path, "live", "none")
    assert len(rows) >= TRIALS * (N_TRAIN + N_VAL)
    assert len({pid for pid, _, _ in rows}) >= 2  # rendered in the Ray trial processes
