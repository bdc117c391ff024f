"""Sweep overhead: the same trials through ``lesionsweep sweep`` vs bare and sequential.

Runs a sweep of ``--trials`` trials (random search over the learning rate of CAM on the phantom,
no early stopping), then trains exactly the same run configs again, bare (``run_training`` in
this process, one after the other, no Ray), and prints::

    ratio = sweep wall time / ideal,   ideal = sum(bare trial times) / concurrency

plus the platform overhead per trial (``(sweep wall - ideal) / trials * concurrency``). Ray's
start-up is timed separately and left out of the sweep wall time (it is paid once per sweep).
The trial length is set with ``--epochs``, ``--image-size`` and ``--num-train``; the target is a
ratio <= 1.10 for trials of 30 s or more. ``--workers 2`` runs every trial under Ray Train
(``TorchTrainer``, gloo on CPU) to measure that path.

Note: with ``--concurrency`` equal to the machine's cores, concurrent trials also compete for
memory bandwidth, which bare sequential runs do not; ``--concurrency 1`` isolates the platform's
own overhead.

Example (2-core laptop, about 4 minutes)::

    python benchmarks/bench_sweep.py --trials 4 --concurrency 2 --epochs 3 --num-train 384
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--num-train", type=int, default=384)
    ap.add_argument("--num-val", type=int, default=64)
    ap.add_argument("--backbone", default="test_resnet")
    ap.add_argument("--workers", type=int, default=1, help="data-parallel workers per trial")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--num-cpus", type=int, help="logical CPUs of the local Ray (default: all)")
    ap.add_argument("--keep", help="keep the sweep folder here (default: a temp folder)")
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(args.cpus_per_worker))))
    import torch

    torch.set_num_threads(max(1, int(args.cpus_per_worker)))
    from lesionsweep.config import config_from_dict
    from lesionsweep.sweep import backend
    from lesionsweep.sweep.commands import run_sweep
    from lesionsweep.training import run_training

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": "bench",
        "data": {
            "dataset": "phantom",
            "image_size": args.image_size,
            "options": {"num_train": args.num_train, "num_val": args.num_val},
        },
        "base": {
            "method.backbone": args.backbone,
            "train.epochs": args.epochs,
            "train.batch_size": 16,
            "train.device": "cpu",
            "train.log_images": 2,
            "eval.batch_size": 64,
        },
        "spaces": [
            {
                "name": "cam",
                "base": {"method.name": "cam"},
                "parameters": {"optim.lr": {"float": [1e-4, 1e-2], "log": True}},
            }
        ],
        "searcher": "random",
        "objective": {"metric": "val/auroc_macro", "mode": "max"},
        "budget": {"trials": args.trials},
        "resources": {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker},
        "concurrency": args.concurrency,
        "storage": str(work),
    }
    spec_path = work / "bench.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    if (work / "bench").exists():
        shutil.rmtree(work / "bench")

    t0 = time.perf_counter()
    started = backend.init_ray(num_cpus=args.num_cpus)
    t_ray = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = run_sweep(spec_path, progress=False)
    t_sweep = time.perf_counter() - t1
    if started:
        import ray

        ray.shutdown()

    import pandas as pd

    trials = pd.read_parquet(work / "bench" / "trials.parquet").sort_values("started_at")
    bare: list[float] = []
    for _, row in trials.iterrows():
        cfg = config_from_dict(json.loads(row["config_json"]))
        out = work / "bare" / row["trial_id"]
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        run_training(cfg, out, resume=False)
        bare.append(time.perf_counter() - t)
    epochs = pd.read_parquet(work / "bench" / "epochs.parquet")
    in_trial = float(epochs.groupby("trial_id")["elapsed_s"].max().sum())
    ideal = sum(bare) / args.concurrency
    ratio = t_sweep / ideal
    per_trial = (t_sweep - ideal) * args.concurrency / max(1, len(bare))
    print(
        f"trials: {len(bare)} ({summary.counts}), concurrency {args.concurrency}, "
        f"workers/trial {args.workers}"
    )
    times = ", ".join(f"{b:.1f}" for b in bare)
    print(f"bare trial times: {times} s (mean {sum(bare) / len(bare):.1f} s)")
    print(f"ray.init: {t_ray:.1f} s (not counted)")
    print(f"sweep wall: {t_sweep:.1f} s, ideal (sum bare / concurrency): {ideal:.1f} s")
    print(f"ratio sweep / ideal: {ratio:.3f}   (target <= 1.10 for trials >= 30 s)")
    print(f"platform overhead per trial: {per_trial:.1f} s")
    outside = t_sweep - in_trial / args.concurrency
    print(
        f"sweep time outside the trial functions: {outside:.1f} s "
        f"({outside * args.concurrency / max(1, len(bare)):.1f} s per trial; trial code "
        f"{in_trial:.1f} s in total vs {sum(bare):.1f} s bare). On a shared machine the bare "
        "times vary with the background load; this line does not depend on them."
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
