"""Data-layer benchmark in one run: phantom generation images/s, then PNG-decode vs cache images/s.

Runs ``bench_phantom.py`` (single-threaded generation at several sizes, ratio to the 500 img/s
target at 256 px) and ``bench_cache.py`` (stand-in 1024² PNGs decoded through the NIH loader vs
the memory-mapped cache, side by side, with the ratio). Usage::

    python benchmarks/bench_data.py
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    for script, argv in (("bench_phantom.py", ["--sizes", "64", "256"]), ("bench_cache.py", [])):
        print(f"\n=== {script} {' '.join(argv)} ===", flush=True)
        old = sys.argv
        sys.argv = [str(HERE / script), *argv]
        try:
            runpy.run_path(str(HERE / script), run_name="__main__")
        finally:
            sys.argv = old


if __name__ == "__main__":
    main()
