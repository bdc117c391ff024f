"""Shipped search spaces (``lesionsweep.search_spaces``): declarative YAML, one file per space.

``demo`` is the tiny space of ``lesionsweep sweep`` with no argument; the others are one per
method plus the pooling, loss and architecture studies. :func:`space_names` lists them and
:func:`space_path` locates one; :func:`lesionsweep.sweep.spaces.load_space` loads and validates.
"""

from __future__ import annotations

from pathlib import Path

from lesionsweep.errors import ConfigError

__all__ = ["SPACES_DIR", "space_names", "space_path"]

#: the folder holding the shipped ``<name>.yaml`` files (package data)
SPACES_DIR = Path(__file__).resolve().parent


def space_names() -> list[str]:
    """Sorted names of the shipped spaces (file stems)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def space_path(name: str) -> Path:
    """Path of the shipped space ``name``.

    Raises:
        ConfigError: no such shipped space (the message lists the shipped ones).
    """
    p = SPACES_DIR / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(
            f"no shipped search space named {name!r}; shipped: {', '.join(space_names())} "
            "(or give a path to your own .yaml)"
        )
    return p
