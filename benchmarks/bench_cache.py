"""Decode-and-resize from PNG vs. reading the preprocessed cache, side by side in one run.

Writes N stand-in 1024 x 1024 film-like PNGs with NIH-style metadata in a temporary folder
(:func:`lesionsweep.data.standin.make_nih_root`), then, in this one process:

1. reads every item of the ``train``, ``val`` and ``test`` splits through ``NIHDataset``
   (``cv2`` PNG decode + ``INTER_AREA`` resize to ``--size``), timed;
2. builds the cache (timed, reported separately);
3. reads the same items through ``CachedDataset`` (memory-mapped ``uint8`` arrays), repeated
   until at least ``--min-seconds`` have passed, timed; plus batches through a ``DataLoader``
   (``num_workers=0``, the project's ``collate``).

Prints images/s for each and the ratio. The cache was just written, so its pages are most likely
in the OS page cache (as they are for every epoch after the first in training).

Usage: ``python benchmarks/bench_cache.py [--n 300] [--size 256]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from lesionsweep.config import DataConfig
from lesionsweep.data import CachedDataset, build_cache, build_dataset, collate
from lesionsweep.data.standin import make_nih_root
from torch.utils.data import DataLoader

SPLITS = ("train", "val", "test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="stand-in images")
    ap.add_argument("--size", type=int, default=256, help="delivered image side")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nih"
        t0 = time.perf_counter()
        make_nih_root(root, num_images=args.n, image_px=1024, seed=0)
        mb = sum(p.stat().st_size for p in root.rglob("*.png")) / 1e6
        print(f"wrote {args.n} stand-in 1024x1024 PNGs ({mb:.0f} MB, {mb / args.n * 1e3:.0f} kB "
              f"each) in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        cfg = DataConfig(dataset="nih", root=str(root), image_size=args.size)

        sources = [build_dataset(cfg, s) for s in SPLITS]
        n = sum(len(d) for d in sources)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        for d in sources:
            for i in range(len(d)):  # type: ignore[arg-type]
                d[i]
        png_s = time.perf_counter() - t0
        png_rate = n / png_s

        t0 = time.perf_counter()
        out = build_cache(cfg, Path(tmp) / "cache", splits=SPLITS, num_workers=0)
        build_s = time.perf_counter() - t0

        cached = [CachedDataset(out, s) for s in SPLITS]
        assert sum(len(d) for d in cached) == n
        reps, t0 = 0, time.perf_counter()
        while True:
            for d in cached:
                for i in range(len(d)):
                    d[i]
            reps += 1
            if time.perf_counter() - t0 >= args.min_seconds:
                break
        cache_rate = reps * n / (time.perf_counter() - t0)

        loader = DataLoader(cached[0], batch_size=64, shuffle=True, collate_fn=collate)
        reps, seen, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < args.min_seconds:
            for b in loader:
                seen += len(b)
            reps += 1
        loader_rate = seen / (time.perf_counter() - t0)

    print(f"items: {n} ({', '.join(SPLITS)}), image_size {args.size}, single process")
    print(f"PNG decode + resize (NIHDataset):       {png_rate:10.1f} images/s")
    print(f"cache build (decode + write):           {n / build_s:10.1f} images/s")
    print(f"cache read (CachedDataset[i]):          {cache_rate:10.1f} images/s")
    print(f"cache read (DataLoader, batch 64):      {loader_rate:10.1f} images/s")
    print(f"speed-up cache / PNG:                   {cache_rate / png_rate:10.1f} x")


if __name__ == "__main__":
    main()
