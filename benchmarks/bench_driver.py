"""Driver cost per trial at 100 and 10,000 trials: is the sweep driver flat?

Drives the REAL driver-side pieces in-process, exactly as Tune's controller calls them, with no
Ray cluster: the Optuna searcher (:class:`SweepSearcher`, bounded-history TPE, journal storage),
ASHA (:class:`PersistentASHA`), the results callback (trial fragments, HParams sessions,
progress bookkeeping), with synthetic trials of 20 epochs whose objective depends on the drawn
learning rate. Each trial also writes its epoch fragment with ~164 metrics per epoch, as a real
trial does (timed apart: trial side, not driver). Each N runs in its own process (its own peak
RSS). Printed: ms/trial over the whole run and over the last 100 trials (marginal cost), trial
side ms/trial, the end-of-sweep compaction time, peak RSS; last line::

    N=10000 ms_per_trial=<float> ratio=<float> rss_mb=<float>

where ms_per_trial is the marginal driver cost at 10,000 (the last 100 trials) and ratio is it
divided by the marginal cost at 100 (its last 100 trials, i.e. all of them; the median of
``--base-runs`` runs, 3 by default: a run that short is easily inflated by a busy neighbour).

Usage: ``python benchmarks/bench_driver.py [--sizes 100 10000] [--epochs 20]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _metrics(obj: float, epoch: int, rng: random.Random) -> dict[str, float]:
    """~164 metrics as the trainer reports them (14 classes x 11 + headline)."""
    classes = [f"c{i:02d}" for i in range(14)]
    m: dict[str, float] = {
        "val/auroc_macro": obj,
        "val/loss": 1.0 - obj,
        "train/loss": 1.0 - obj + 0.05,
        "val/pxap": obj * 0.8,
        "val/maxboxacc": obj * 0.7,
        "val/dice": obj * 0.6,
        "lr": 1e-3,
        "time/epoch_s": 1.0,
        "time/eval_s": 0.2,
        "val/f1_macro": obj * 0.9,
    }
    for c in classes:
        for k in ("auroc", "ap", "f1", "pxap", "maxboxacc", "iobb10", "iobb25", "iobb50", "dice",
                  "point", "loss"):  # fmt: skip
            m[f"val/{k}/{c}"] = obj * rng.uniform(0.8, 1.0)
    return m


def _rss_now_mb() -> float:
    """Current resident set size (the driver after its imports and set-up)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(n: int, epochs: int, folder: Path, max_history: int | None = None) -> dict[str, float]:
    from lesionsweep.sweep import backend
    from lesionsweep.sweep.results import EpochRecord
    from lesionsweep.sweep.spec import load_spec
    from lesionsweep.sweep.store import write_epoch_fragment
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    spec = load_spec(
        None,
        {
            "name": "bench",
            "storage": str(folder),
            "budget.trials": n,
            "base.train.epochs": epochs,
            "early_stopping": {"scheduler": "asha", "grace_period": 1, "reduction_factor": 3},
            **({"searcher": {"name": "tpe", "max_history": max_history}} if max_history else {}),
        },
    )
    ctx = backend.SweepContext(spec=spec, root=str(folder / "bench"), progress=False)
    searcher, sched, cb = backend.build_pieces(ctx)
    cb.setup()
    rss_setup = _rss_now_mb()
    rng = random.Random(0)
    driver_s, trial_side_s = 0.0, 0.0
    per_trial: list[float] = []
    for i in range(n):
        tid = f"t{i:05d}"
        t0 = time.perf_counter()
        config = searcher.suggest(tid)
        assert config is not None
        trial = Trial("bench", trial_id=tid, config=config, stub=True)
        sched.on_trial_add(None, trial)
        cb.on_trial_start(i, [], trial)
        lr = float(config[backend.PARAMS_KEY].get("optim.lr", 1e-3))
        quality = math.exp(-abs(math.log10(lr) + 2.5))
        rows: list[EpochRecord] = []
        result: dict[str, float] = {}
        for epoch in range(1, epochs + 1):
            obj = 0.5 + 0.45 * quality * (1 - math.exp(-epoch / 5)) + rng.gauss(0, 0.005)
            ts = time.perf_counter()
            metrics = _metrics(obj, epoch, rng)
            rows.append(EpochRecord(tid, "s", "m", epoch, float(epoch), metrics=metrics))
            trial_side_s += time.perf_counter() - ts
            result = {"val/auroc_macro": obj, "epoch": epoch, "epochs_total": epochs,
                      "time_total_s": float(epoch), "training_iteration": epoch}  # fmt: skip
            decision = sched.on_trial_result(None, trial, result)
            searcher.on_trial_result(tid, result)
            cb.on_trial_result(i, [], trial, result)
            if decision == TrialScheduler.STOP:
                break
        ts = time.perf_counter()
        write_epoch_fragment(ctx.location, "bench", tid, rows)  # the trial's own write
        trial_side_s += time.perf_counter() - ts
        trial.run_metadata.last_result = result
        sched.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(tid, result=result)
        cb.on_trial_complete(i, [], trial)
        dt = time.perf_counter() - t0
        per_trial.append(dt)
        if i == min(99, n - 1):
            rss_100 = _rss_now_mb()
        driver_s += dt
    driver_s -= trial_side_s
    rss_end = _rss_now_mb()
    t0 = time.perf_counter()
    cb.on_experiment_end([])
    compact_s = time.perf_counter() - t0
    # marginal driver cost: the last 100 trials (trial side spread evenly)
    side_per = trial_side_s / n
    last = per_trial[-100:]
    counts = cb._counts()
    return {
        "n": n,
        "ms_per_trial": 1000 * driver_s / n,
        "ms_marginal": 1000 * (sum(last) / len(last) - side_per),
        "trial_side_ms": 1000 * side_per,
        "compact_s": compact_s,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_setup_mb": rss_setup,
        "rss_100_mb": rss_100,
        "rss_end_mb": rss_end,
        "pruned": counts.get("pruned", 0),
        "completed": counts.get("completed", 0),
        "best": max((r.objective or 0.0) for r in cb.store.trials.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10000])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--max-history",
        type=int,
        help="TPE's bounded history (default: the sweep's, 500 finished trials); TPE's cost per "
        "suggest grows with it up to that size",
    )
    ap.add_argument(
        "--base-runs",
        type=int,
        default=3,
        help="runs of the first (smallest) size; the ratio's base is the median run (a 100-trial "
        "run lasts ~2 s of driver time, which a busy neighbour can inflate by half)",
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run_one(args.one, args.epochs, Path(d), args.max_history)))
        return
    rows = []
    for i, n in enumerate(args.sizes):
        tries = []
        for _ in range(args.base_runs if i == 0 else 1):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--epochs", str(args.epochs),
                 *(["--max-history", str(args.max_history)] if args.max_history else [])],
                check=True, capture_output=True, text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["wall_s"] = time.perf_counter() - t0
            tries.append(row)
        if len(tries) > 1:
            print(
                f"N={n:>6}: {len(tries)} runs, driver ms/trial (last 100) "
                + ", ".join(f"{r['ms_marginal']:.1f}" for r in tries)
                + "; the median run is the base",
                flush=True,
            )
        row = sorted(tries, key=lambda r: r["ms_marginal"])[len(tries) // 2]
        rows.append(row)
        print(
            f"N={n:>6}: driver {row['ms_per_trial']:.1f} ms/trial (last 100: "
            f"{row['ms_marginal']:.1f}), trial side {row['trial_side_ms']:.1f} ms/trial, "
            f"compaction {row['compact_s']:.1f} s, peak RSS {row['rss_mb']:.0f} MB "
            f"(after set-up {row['rss_setup_mb']:.0f}, after 100 trials {row['rss_100_mb']:.0f}, "
            f"before compaction {row['rss_end_mb']:.0f} MB), "
            f"{row['completed']} completed / {row['pruned']} pruned, best {row['best']:.4f}, "
            f"wall {row['wall_s']:.0f} s",
            flush=True,
        )
    base, top = rows[0], rows[-1]
    ratio = top["ms_marginal"] / base["ms_marginal"]
    print(
        f"N={top['n']} ms_per_trial={top['ms_marginal']:.2f} ratio={ratio:.2f} "
        f"rss_mb={top['rss_mb']:.1f}"
    )


if __name__ == "__main__":
    main()
