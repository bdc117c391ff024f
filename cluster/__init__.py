"""Cluster recipes (``lesionsweep.cluster``): a Ray cluster-launcher config, a KubeRay RayJob,
a SLURM script and resource profiles; see ``README.md`` in this folder.

:func:`profile_names` lists the shipped resource profiles (``profile-<name>.yaml``) and
:func:`profile_path` locates one; ``lesionsweep sweep --profile NAME`` merges it into a spec.
"""

from __future__ import annotations

from pathlib import Path

from lesionsweep.errors import ConfigError

__all__ = ["CLUSTER_DIR", "profile_names", "profile_path"]

#: the folder holding the shipped recipes (package data)
CLUSTER_DIR = Path(__file__).resolve().parent


def profile_names() -> list[str]:
    """Names of the shipped resource profiles."""
    return sorted(p.stem[len("profile-") :] for p in CLUSTER_DIR.glob("profile-*.yaml"))


def profile_path(name_or_path: str) -> Path:
    """A shipped profile by name, or a path to your own profile YAML.

    Raises:
        ConfigError: neither a shipped profile nor an existing file.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"resource profile not found: {p}")
        return p
    shipped = CLUSTER_DIR / f"profile-{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(
            f"no resource profile named {name_or_path!r}; shipped: {', '.join(profile_names())} "
            "(or give a path to a .yaml)"
        )
    return shipped
