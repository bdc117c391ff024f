"""Search efficiency: TPE + ASHA against random search without early stopping.

Both arms sweep the same space (CAM vs multi-scale CAM, pooling, loss, learning rate: the demo
space) on the phantom with a small backbone, with the same number of trials (``--tpe-trials``
gives TPE + ASHA more, e.g. about the same epoch budget as random search) and the same
``--seeds`` sweep seeds (sampler seed and every trial's training seed). For each run the
search-efficiency curve is read back from the sweep folder exactly as the report draws it
(:func:`lesionsweep.sweep.report.data.best_so_far`: best *final* validation objective of a
completed trial against epochs spent by all trials, pruned ones included). Printed:

* per seed: random search's final best and its epochs; the epochs TPE + ASHA spent when its
  best-so-far first reached that value; their ratio (target <= 1/3); TPE + ASHA's own final best;
* the best-so-far curves (mean over seeds) at a few epoch budgets, side by side;
* the median ratio over seeds ("never" counts as infinite).

Example (2-core laptop, tens of minutes)::

    python benchmarks/bench_search.py --seeds 3 --trials 16 --epochs 8
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml


def _spec(folder: Path, name: str, args: argparse.Namespace, seed: int, tpe_asha: bool) -> Path:
    body: dict[str, Any] = {
        "name": name,
        "data": {
            "dataset": "phantom",
            "image_size": args.image_size,
            "options": {"num_train": args.num_train, "num_val": args.num_val},
        },
        "base": {
            "method.backbone": args.backbone,
            "train.epochs": args.epochs,
            "train.batch_size": 32,
            "train.log_images": 0,
            "train.device": "cpu",
            "eval.batch_size": 64,
        },
        "spaces": ["demo"],
        "objective": {"metric": args.metric, "mode": "max"},
        "searcher": {"name": "tpe", "n_startup_trials": args.startup} if tpe_asha else "random",
        "early_stopping": (
            {"scheduler": "asha", "grace_period": 1, "reduction_factor": 3} if tpe_asha else "none"
        ),
        "budget": {"trials": args.tpe_trials if tpe_asha else args.trials},
        "concurrency": args.concurrency,
        "seed": seed,
        "storage": str(folder),
    }
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def _reach(xs: list[int], ys: list[float], target: float) -> float:
    for x, y in zip(xs, ys, strict=True):
        if y >= target:
            return float(x)
    return math.inf


def _at(xs: list[int], ys: list[float], budget: int) -> float:
    best = math.nan
    for x, y in zip(xs, ys, strict=True):
        if x <= budget:
            best = y
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument(
        "--tpe-trials",
        type=int,
        help="trials of the TPE + ASHA arm (default: --trials; more trials give it about the "
        "same epoch budget as random search, since ASHA stops most of them early)",
    )
    ap.add_argument("--startup", type=int, default=4, help="TPE's random start-up trials")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--num-train", type=int, default=128)
    ap.add_argument("--num-val", type=int, default=64)
    ap.add_argument("--backbone", default="test_resnet")
    ap.add_argument("--metric", default="val/auroc_macro")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--keep", help="keep the sweep folders here (default: a temp folder)")
    args = ap.parse_args()
    args.tpe_trials = args.tpe_trials or args.trials

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lesionsweep.sweep import backend
    from lesionsweep.sweep.commands import run_sweep
    from lesionsweep.sweep.report.data import best_so_far, load_sweep

    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench_search_"))
    folder.mkdir(parents=True, exist_ok=True)
    started = backend.init_ray(num_cpus=args.num_cpus)
    curves: dict[str, list[tuple[list[int], list[float], int]]] = {"tpe_asha": [], "random": []}
    try:
        for seed in range(args.seeds):
            for arm in ("random", "tpe_asha"):
                name = f"{arm}_s{seed}"
                spec = _spec(folder, name, args, seed, arm == "tpe_asha")
                run_sweep(spec, progress=False)
                data = load_sweep(folder / name)
                xs, ys = best_so_far(data)
                curves[arm].append((xs, ys, len(data.epochs)))
                print(
                    f"{name}: {len(data.trials)} trials, {len(data.epochs)} epochs, "
                    f"final best {ys[-1] if ys else float('nan'):.4f}",
                    flush=True,
                )
    finally:
        if started:
            backend.shutdown_ray()

    print(f"\nobjective: best final {args.metric} of a completed trial (max)")
    print(
        "seed  random_best  random_epochs  tpe_asha_epochs_to_reach  ratio  tpe_asha_best  "
        "tpe_asha_epochs"
    )
    ratios = []
    for seed in range(args.seeds):
        rx, ry, r_total = curves["random"][seed]
        tx, ty, t_total = curves["tpe_asha"][seed]
        target = ry[-1]
        need = _reach(tx, ty, target)
        ratio = need / r_total
        ratios.append(ratio)
        print(
            f"{seed:4d}  {target:11.4f}  {r_total:13d}  {need:24.0f}  {ratio:5.2f}  "
            f"{ty[-1]:13.4f}  {t_total:15d}"
        )
    top = max(c[2] for arm in curves.values() for c in arm)
    print("\nbest-so-far (mean over seeds) against epochs spent")
    print("epochs  random  tpe_asha")
    for frac in (0.1, 0.2, 0.33, 0.5, 0.75, 1.0):
        b = max(1, round(frac * top))
        vals = []
        for arm in ("random", "tpe_asha"):
            pts = [_at(x, y, b) for x, y, _ in curves[arm]]
            pts = [p for p in pts if not math.isnan(p)]
            vals.append(statistics.mean(pts) if len(pts) == args.seeds else math.nan)
        print(f"{b:6d}  {vals[0]:6.4f}  {vals[1]:8.4f}")
    print(
        f"\nratio of epochs TPE+ASHA needs to reach random search's final best: median "
        f"{statistics.median(ratios):.2f} (per seed {', '.join(f'{r:.2f}' for r in ratios)}; "
        "target <= 0.33)"
    )
    print(f"sweep folders: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
