"""A sweep's data path: the live phantom in every trial vs the sweep's shared cache, in one run.

Emulates the data side of a sweep of ``--trials`` trials on the phantom, in this one process,
trial after trial, each as the trainer sets it up (``build_dataset`` for ``train`` and ``val``,
the trainer's ``make_loader`` with ``data.num_workers`` workers, ``labels_only`` collate):

* **live**: every trial builds its own ``PhantomDataset`` (a fresh trial process starts with an
  empty in-memory cache) and renders as its loader asks;
* **cache**: :func:`lesionsweep.sweep.datacache.prepare_sweep_data` builds the sweep's cache
  once (timed separately), then every trial reads it through ``data.cache``.

Per mode it prints the per-trial data start-up (datasets built + first training batch), the
images/s delivered to the training step over ``--epochs`` epochs of ``train`` (the step itself
is a no-op, so this is what the data side can feed) and the phantom renders of the whole sweep,
counted in the loader workers too (a shared counter inherited by the forked workers). Want: the
cache renders the dataset size once, live renders about trials x dataset size (and more with
workers, which keep separate in-memory copies).

The live numbers flatter live a little: the phantom's per-size precomputed banks stay warm in
this process across trials, where each real trial process builds them again.

Usage: ``python benchmarks/bench_sweep_data.py [--trials 4] [--size 256] [--num-train 256]
[--num-val 64] [--epochs 2] [--workers 2] [--batch 32]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from typing import Any

import torch
from lesionsweep.data import build_dataset
from lesionsweep.data.phantom import dataset as phantom_module
from lesionsweep.sweep.datacache import prepare_sweep_data, reachable_configs
from lesionsweep.sweep.spec import build_trial_config, spec_from_dict
from lesionsweep.training.runtime import make_loader


def _count_renders(counter: Any) -> None:
    real = phantom_module._render

    def counted(spec: Any, stream: int, index: int) -> Any:
        with counter.get_lock():
            counter.value += 1
        return real(spec, stream, index)

    phantom_module._render = counted


def _trial(cfg: Any, epochs: int, batch: int) -> tuple[float, float]:
    """``(start-up s, train images/s over the epochs)`` of one trial's data side."""
    t0 = time.perf_counter()
    train = build_dataset(cfg.data, "train")
    val = build_dataset(cfg.data, cfg.eval.split)
    loader = make_loader(
        train,
        batch_size=batch,
        num_workers=cfg.data.num_workers,
        device=torch.device("cpu"),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        drop_last=True,
        labels_only=True,
    )
    it = iter(loader)
    seen = len(next(it))
    startup = time.perf_counter() - t0
    for b in it:
        seen += len(b)
    for _ in range(epochs - 1):
        for b in loader:
            seen += len(b)
    rate = seen / (time.perf_counter() - t0 - startup)
    for i in range(len(val)):  # the validation pass reads every val item each epoch
        val[i]
    del it, loader
    return startup, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--num-train", type=int, default=256)
    ap.add_argument("--num-val", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="data.num_workers")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    counter = mp.get_context("fork").Value("l", 0)
    _count_renders(counter)
    n_items = args.num_train + args.num_val

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("live", "cache"):
            spec = spec_from_dict(
                {
                    "name": mode,
                    "data": {
                        "dataset": "phantom",
                        "image_size": args.size,
                        "num_workers": args.workers,
                        "options": {"num_train": args.num_train, "num_val": args.num_val},
                    },
                    "base": {"method.name": "cam", "method.backbone": "test_resnet"},
                    "spaces": [{"name": "s", "parameters": {"optim.lr": {"const": 1e-3}}}],
                    "budget": {"trials": args.trials},
                    "storage": tmp,
                    "data_cache": "sweep" if mode == "cache" else "none",
                }
            )
            counter.value = 0
            t0 = time.perf_counter()
            spec = prepare_sweep_data(spec, spec.location.root, progress=False)
            prep_s = time.perf_counter() - t0
            prep_renders = counter.value
            (cfg0,) = reachable_configs(spec)
            startups, rates = [], []
            for _ in range(args.trials):
                cfg = build_trial_config(spec, "s", {})
                assert (cfg.data.cache is not None) == (mode == "cache")
                s, r = _trial(cfg, args.epochs, args.batch)
                startups.append(s)
                rates.append(r)
            results[mode] = {
                "prep_s": prep_s,
                "prep_renders": prep_renders,
                "startup_s": sum(startups) / len(startups),
                "rate": sum(rates) / len(rates),
                "renders": counter.value,
            }

    live, cache = results["live"], results["cache"]
    print(
        f"phantom {args.size} px, {args.num_train} train + {args.num_val} val = {n_items} images, "
        f"{args.trials} trials x {args.epochs} epochs, data.num_workers {args.workers}, "
        f"batch {args.batch}, CPU, 1 torch thread"
    )
    print(f"{'':34s}{'live':>12s}{'cache':>12s}{'cache/live':>12s}")
    print(
        f"{'sweep data preparation (s)':34s}{live['prep_s']:12.2f}{cache['prep_s']:12.2f}{'':>12s}"
    )
    print(
        f"{'per-trial data start-up (s)':34s}{live['startup_s']:12.3f}{cache['startup_s']:12.3f}"
        f"{cache['startup_s'] / live['startup_s']:12.3f}"
    )
    print(
        f"{'train images/s to the step':34s}{live['rate']:12.0f}{cache['rate']:12.0f}"
        f"{cache['rate'] / live['rate']:12.1f}"
    )
    print(
        f"{'phantom renders per sweep':34s}{live['renders']:12.0f}{cache['renders']:12.0f}"
        f"{cache['renders'] / live['renders']:12.3f}"
    )
    print(
        f"renders / dataset size: live {live['renders'] / n_items:.2f} "
        f"(trials = {args.trials}), cache {cache['renders'] / n_items:.2f} "
        f"(all {cache['prep_renders']} in the one build)"
    )


if __name__ == "__main__":
    main()
