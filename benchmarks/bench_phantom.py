"""Phantom rendering speed on ONE core: images/s per image size and the ratio to the target.

Target: >= 500 images/s at 256 px, single-threaded (numpy, torch and OpenCV limited to one
thread). Measures ``render_phantom`` (numpy item with all five mask planes) and
``PhantomDataset.__getitem__`` without the cache (torch ``Sample``), both with the default knobs
(prevalence 0.3, difficulty 0.3) plus a confounder, over fresh indices.

Usage::

    python benchmarks/bench_phantom.py                 # 64/128/256/512 px, ~2 s each
    python benchmarks/bench_phantom.py --cpu 3         # pin to core 3 first (Linux)
    python benchmarks/bench_phantom.py --preview phantom.png

Wall time is what counts; CPU time is printed too because on a shared machine the wall time of
a single-threaded loop also measures the other processes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy / torch are imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

TARGET_SIZE = 256
TARGET_RATE = 500.0


def _rate(fn, seconds: float, batches: int = 5) -> tuple[float, float, float]:
    """Call ``fn(i)`` for fresh ``i`` in ``batches`` timed batches of about ``seconds / batches``.

    Returns (median wall img/s, best wall img/s, median cpu img/s) over the batches: the median
    is the figure to quote, the best shows what an undisturbed core does.
    """
    fn(0)  # warm the per-size caches
    t0 = time.perf_counter()
    n = 1
    while time.perf_counter() - t0 < 0.1:  # calibrate the batch size
        fn(n)
        n += 1
    per_batch = max(10, int(n * seconds / batches / 0.1))
    walls, cpus = [], []
    i = n
    for _ in range(batches):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(per_batch):
            i += 1
            fn(i)
        walls.append(per_batch / (time.perf_counter() - t))
        cpus.append(per_batch / max(time.process_time() - c, 1e-9))
    return statistics.median(walls), max(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--preview", default=None, help="also write a preview PNG here")
    args = parser.parse_args(argv)

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from lesionsweep.data.phantom import PhantomDataset, PhantomSpec, render_phantom, save_preview

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"phantom speed, 1 thread, load average {load:.1f} on {os.cpu_count()} cores")
    print("median (best) of 5 batches; cpu = images per CPU second")
    print(f"{'size':>5} {'render img/s':>18} {'cpu':>6} {'dataset img/s':>18} {'cpu':>6}")
    at_target = None
    for size in args.sizes:
        spec = PhantomSpec(image_size=size, confounder_class="effusion")
        r_med, r_best, r_cpu = _rate(lambda i, spec=spec: render_phantom(spec, 0, i), args.seconds)
        ds = PhantomDataset(
            image_size=size, num_train=10**9, cache_in_memory=False, confounder_class="effusion"
        )
        d_med, d_best, d_cpu = _rate(ds.__getitem__, args.seconds)
        print(
            f"{size:>5} {r_med:>10.0f} ({r_best:>5.0f}) {r_cpu:>6.0f} "
            f"{d_med:>10.0f} ({d_best:>5.0f}) {d_cpu:>6.0f}"
        )
        if size == TARGET_SIZE:
            at_target = (r_med, d_med, r_cpu, d_cpu)
    if at_target is not None:
        r_med, d_med, r_cpu, d_cpu = at_target
        print(
            f"ratio to the {TARGET_RATE:.0f} img/s target at {TARGET_SIZE} px (median): "
            f"render {r_med / TARGET_RATE:.2f}x, dataset {d_med / TARGET_RATE:.2f}x "
            f"(per CPU second: render {r_cpu / TARGET_RATE:.2f}x, "
            f"dataset {d_cpu / TARGET_RATE:.2f}x)"
        )
    if args.preview:
        print("preview:", save_preview(args.preview))


if __name__ == "__main__":
    main()
