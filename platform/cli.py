"""The ``lesionsweep`` command line (filled in as components land)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("lesionsweep: no commands yet", file=sys.stderr)
    return 2
