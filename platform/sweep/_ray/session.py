"""The Ray session of a sweep driver: connect to a cluster or start a local one, and end it.

Part of the private :mod:`lesionsweep.sweep._ray` package, the only place that imports Ray.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

__all__ = ["init_ray", "shutdown_ray", "TRIAL_ENV"]

TRIAL_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
}


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool = True,
) -> bool:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start a local one.

    A local cluster runs in-process with the dashboard off; Ray's token authentication is left
    as Ray configures it. Returns True if this call started/connected Ray (and the caller should
    shut it down), False if Ray was already initialised (e.g. a test session).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(TRIAL_ENV)},
        "log_to_driver": not quiet,
        "logging_level": logging.WARNING if quiet else logging.INFO,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            address="local",
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            **kwargs,
        )
    return True


def shutdown_ray() -> None:
    """Shut down the Ray session :func:`init_ray` started."""
    ray.shutdown()
