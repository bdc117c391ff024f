"""MaxBoxAccV2 / PxAP / NIH T(IoBB) time per map: the reference kernels vs the fast ones.

Both run on the same maps in one process, interleaved rep by rep, and their results are checked
for equality before any time is printed. Time is CPU time of this process (``process_time``), so
the figures are per core and hold on a shared machine; OpenCV runs single-threaded.

Maps look like trained CAMs: a low-resolution class map (a Gaussian bump near the lesion plus
noise, as a ResNet's stride-32 map of a 224/512 px film) upsampled bicubically to the image size
and min-max normalised exactly as the suite does (``prepare_scoremaps``); one GT box per map near
the bump. Run::

    python benchmarks/bench_metrics.py [--maps 40] [--reps 3] [--sizes 224,512]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import cv2
import numpy as np
from lesionsweep.metrics.nih import NihBoxEvaluator
from lesionsweep.metrics.reference import (
    ReferenceMaxBoxAccV2Evaluator,
    ReferenceNihBoxEvaluator,
    ReferencePxAPEvaluator,
)
from lesionsweep.metrics.wsol import MaxBoxAccV2Evaluator, PxAPEvaluator, prepare_scoremaps

CLASSES = tuple(f"class{i}" for i in range(14))


def make_maps(n: int, size: int, seed: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """``n`` CAM-like score maps ``[n, size, size]`` in [0, 1], GT boxes, GT masks."""
    rng = np.random.default_rng(seed)
    low = max(size // 32, 4)
    yy, xx = np.mgrid[0:low, 0:low] + 0.5
    raw = np.empty((n, low, low))
    boxes = []
    for i in range(n):
        cx, cy = rng.uniform(0.2, 0.8, 2) * low
        sx, sy = rng.uniform(0.6, 2.0, 2)
        raw[i] = 3 * np.exp(-((xx - cx) ** 2 / (2 * sx**2) + (yy - cy) ** 2 / (2 * sy**2)))
        raw[i] += rng.normal(scale=0.7, size=(low, low))
        scale = size / low
        w, h = 2 * sx * scale * rng.uniform(0.7, 1.4), 2 * sy * scale * rng.uniform(0.7, 1.4)
        x0 = np.clip(cx * scale - w / 2 + rng.normal(scale=w / 6), 0, size - 2)
        y0 = np.clip(cy * scale - h / 2 + rng.normal(scale=h / 6), 0, size - 2)
        boxes.append(np.array([[x0, y0, min(x0 + w, size - 1), min(y0 + h, size - 1)]]))
    maps = prepare_scoremaps(raw, (size, size))
    masks = np.zeros(maps.shape, bool)
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = b[0].astype(int)
        masks[i, y0 : y1 + 1, x0 : x1 + 1] = True
    return maps, boxes, masks


def cpu_ms_per_map(run: Callable[[], object], n_maps: int) -> float:
    t = time.process_time()
    run()
    return (time.process_time() - t) * 1e3 / n_maps


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def bench(size: int, n: int, reps: int, seed: int) -> list[tuple[str, float, float]]:
    maps, boxes, masks = make_maps(n, size, seed)
    int_boxes = [b.astype(np.int64) for b in boxes]
    classes = np.arange(n) % len(CLASSES)
    # NIH takes the raw upsampled map; its per-map min-max makes the [0, 1] maps equivalent
    cases = {
        "MaxBoxAccV2": (
            lambda cls: cls(),
            (ReferenceMaxBoxAccV2Evaluator, MaxBoxAccV2Evaluator),
            lambda ev: ev.accumulate(maps, int_boxes),
        ),
        "PxAP": (
            lambda cls: cls(),
            (ReferencePxAPEvaluator, PxAPEvaluator),
            lambda ev: ev.accumulate(maps, masks),
        ),
        "NIH T(IoBB)": (
            lambda cls: cls(CLASSES),
            (ReferenceNihBoxEvaluator, NihBoxEvaluator),
            lambda ev: ev.accumulate(maps, classes, boxes),
        ),
    }
    rows = []
    for name, (make, (ref_cls, new_cls), feed) in cases.items():
        times: dict[str, list[float]] = {"ref": [], "new": []}
        results = {}
        for _ in range(reps):
            for tag, cls in (("ref", ref_cls), ("new", new_cls)):
                ev = make(cls)
                times[tag].append(cpu_ms_per_map(lambda ev=ev, feed=feed: feed(ev), n))
                results[tag] = ev.compute()
        if not same(results["ref"], results["new"]):
            raise SystemExit(f"{name} at {size}px: fast and reference results differ")
        rows.append((name, min(times["ref"]), min(times["new"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="224,512")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(f"{'metric':<13} {'size':>5} {'before ms/map':>14} {'after ms/map':>13} {'speed-up':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        for name, before, after in bench(size, args.maps, args.reps, args.seed):
            print(f"{name:<13} {size:>5} {before:>14.3f} {after:>13.3f} {before / after:>8.1f}x")
    print("results identical (fast vs reference) for every metric and size")


if __name__ == "__main__":
    main()
