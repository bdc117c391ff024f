"""The Ray session of a sweep driver: connect to a cluster or start a local one, and end it.

Part of the private :mod:`lesionsweep.sweep._ray` package, the only place that imports Ray.

* **Cluster** (``address`` / ``RAY_ADDRESS``): the cluster is checked before anything else
  happens (reachable, and this driver's token accepted), so a refused connection is one
  :class:`~lesionsweep.errors.ConfigError` and no sweep folder is written.
* **Local** (no address): Ray runs in-process, private to this machine and user:

  - node IP ``127.0.0.1``: the GCS, the raylet, the runtime-env agent, the driver's and every
    worker's gRPC ports listen on loopback only (Ray would use the machine's address);
  - a per-sweep random token held in the environment of the session's processes
    (``RAY_AUTH_TOKEN``), never written to disk, so Ray does not create ``~/.ray/auth_token``
    world-readable. ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``RAY_AUTH_MODE`` set by the
    user are respected;
  - a reaper process (:mod:`.reaper`) that ends the session's Ray processes when the driver
    dies without shutting Ray down (SIGKILL, OOM): Ray leaves its agents behind otherwise.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants, services
from ray._private.authentication.authentication_token_setup import (
    maybe_enable_token_auth_if_token_available,
)
from ray._raylet import (  # type: ignore[attr-defined]  # compiled, no stubs
    AuthenticationTokenLoader,
    Config,
    GcsClient,
)
from ray.exceptions import AuthenticationError, RayError

from ...errors import ConfigError
from . import reaper

__all__ = ["init_ray", "shutdown_ray", "check_cluster", "TRIAL_ENV", "LOOPBACK"]

logger = logging.getLogger(__name__)

TRIAL_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
}

#: the node IP of a local in-process cluster
LOOPBACK = "127.0.0.1"
#: environment variable marking a token this module put into ``os.environ`` (removed at shutdown)
_OWN_TOKEN_MARK = "LESIONSWEEP_RAY_SESSION_TOKEN"
_TOKEN_HELP = (
    "give the driver the cluster's token: RAY_AUTH_MODE=token plus RAY_AUTH_TOKEN=<token> or "
    "RAY_AUTH_TOKEN_PATH=<file> (default file ~/.ray/auth_token; see lesionsweep/cluster/README.md)"
)


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool = True,
) -> bool:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start a private local one.

    Returns:
        True if this call started/connected Ray (the caller then calls :func:`shutdown_ray`),
        False if Ray was already initialised (e.g. a test session).

    Raises:
        ConfigError: the cluster cannot be reached or refuses this driver's token (nothing was
            started; one message naming the address and what to set).
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
        check_cluster(address)
        try:
            ray.init(address=address, **kwargs)
        except AuthenticationError as e:
            msg = f"Ray cluster {address!r} refused this driver's token; {_TOKEN_HELP}"
            raise ConfigError(msg) from e
        except ConnectionError as e:
            raise ConfigError(f"cannot connect to the Ray cluster {address!r}: {e}") from e
        return True
    _use_session_token()
    with _loopback_node():
        ray.init(
            address="local",
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            **kwargs,
        )
    node = ray._private.worker.global_worker.node
    assert node is not None  # ray.init above started this node
    session_dir = node.get_session_dir_path()
    try:
        reaper.spawn(os.getpid(), session_dir)
    except (OSError, subprocess.SubprocessError) as e:  # the sweep runs without it
        logger.warning(
            "could not start the Ray session reaper (%s): a killed driver may leave "
            "Ray processes behind",
            e,
        )
    return True


def shutdown_ray() -> None:
    """Shut down the Ray session :func:`init_ray` started (and forget its per-sweep token)."""
    ray.shutdown()
    mark = os.environ.pop(_OWN_TOKEN_MARK, None)
    if mark is not None:
        os.environ.pop("RAY_AUTH_TOKEN", None)
        if mark == "token+mode":
            os.environ.pop("RAY_AUTH_MODE", None)
            Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def check_cluster(address: str) -> None:
    """Check that a Ray cluster answers at ``address`` and accepts this driver's token.

    ``auto`` resolves as Ray does (``RAY_ADDRESS``, then the last ``ray start`` on this node).
    Ray client addresses (``ray://``) are left to Ray. Nothing is started.

    Raises:
        ConfigError: no cluster found, nothing listening, or the token refused or missing.
    """
    if address.startswith("ray://"):
        return
    try:
        gcs = services.canonicalize_bootstrap_address_or_die(address)
    except (ConnectionError, ValueError) as e:
        raise ConfigError(f"Ray cluster address {address!r}: {e}") from e
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"no Ray cluster answers at {address!r} ({gcs}: {e}); start one "
            "(`ray start --head`) or fix --address / RAY_ADDRESS"
        ) from e
    if address == "auto":  # what ray.init does for "auto" (never for an explicit address)
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    env = os.environ
    if env.get("RAY_AUTH_MODE", "").lower() == "token" and not env.get("RAY_AUTH_TOKEN"):
        _tighten_token_file()  # the file this driver is about to send the token from
    try:
        with _quiet_stderr():
            GcsClient(address=gcs).internal_kv_get(b"session_name", None, timeout=30)
    except AuthenticationError as e:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            what = "refused this driver's token"
        else:
            what = "needs a token and this driver sends none (RAY_AUTH_MODE is not 'token')"
        raise ConfigError(f"Ray cluster {address!r} ({gcs}) {what}; {_TOKEN_HELP}") from e
    except RayError as e:
        raise ConfigError(f"Ray cluster {address!r} ({gcs}) does not answer: {e}") from e


def _default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def _tighten_token_file() -> None:
    """Make the token file this driver reads private (0600) if others can read it."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or _default_token_file())
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and path.owner() == Path.home().owner():
            path.chmod(0o600)
            logger.warning("%s was readable by others; made it private (0600)", path)
    except (OSError, KeyError):
        return


def _use_session_token() -> None:
    """A per-sweep token in this process's environment, unless the user configured one."""
    env = os.environ
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env[_OWN_TOKEN_MARK] = "token"
    if "RAY_AUTH_MODE" not in env:  # what Ray does for a local cluster, without its warning
        env["RAY_AUTH_MODE"] = "token"
        env[_OWN_TOKEN_MARK] = "token+mode"
        Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Make Ray pick ``127.0.0.1`` as the node IP of the cluster started inside this block.

    Ray resolves a loopback ``_node_ip_address`` to the machine's address unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine mode, the default on macOS);
    the driver has read that variable at import, so its constant is set for the block too.
    Processes started in the block inherit the variable.
    """
    key = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_const = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ retry lines Ray's GCS client writes to fd 2 while it is probed."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
