"""Ends the Ray processes of a local session when its driver dies without shutting Ray down.

A local sweep runs Ray in-process: the driver starts the GCS, the raylet and Ray's helper
processes, and the raylet starts the agents and the trial workers. When the driver is killed
(SIGKILL, the OOM killer), Ray's own fate-sharing ends the GCS and the raylet, but
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` stay alive, re-parented to PID 1 (Ray 2.60).

:func:`spawn` starts this module as a small detached process (its own session, so a signal to
the driver's process group does not reach it). It watches the driver once a second and records
the session's processes while the driver is alive: the driver's children whose command line
names the session folder (``/tmp/ray/session_...``), and all their descendants. When the driver
is gone it ends the recorded processes that still run (SIGTERM, then SIGKILL after 3 s); when
the session ended normally (``ray.shutdown()``) it ends any leftover the same way and exits.
Processes are identified by PID *and* start time, so a reused PID is never touched: only
processes proven to belong to that session are ever signalled. A reaper and its launcher name
the session folder too; they are never members (recording them made the reaper end itself first).

Run as ``python -I reaper.py DRIVER_PID SESSION_DIR``; it imports only psutil.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

__all__ = ["spawn", "session_processes", "end_processes", "watch"]

#: this module's file: a reaper (or its launcher) names the session folder too, but is no
#: member of the session
_SELF = str(Path(__file__).resolve())

#: seconds between two looks at the driver
POLL_S = 1.0
#: seconds between SIGTERM and SIGKILL
GRACE_S = 3.0


def spawn(driver_pid: int, session_dir: str) -> None:
    """Start a detached reaper for the session ``session_dir`` of the driver ``driver_pid``.

    The launched process forks the watcher and exits at once, so nothing is left for the
    driver to wait for.
    """
    subprocess.run(
        [sys.executable, "-I", _SELF, str(driver_pid), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        check=True,
        timeout=60,
    )


def _in_session(proc: psutil.Process, session_dir: str) -> bool:
    try:
        args = proc.cmdline()
    except psutil.Error:
        return False
    if _SELF in args:
        return False
    return any(a == session_dir or session_dir + os.sep in a for a in args)


def session_processes(driver: psutil.Process, session_dir: str) -> list[psutil.Process]:
    """The session's live processes: the driver's children that name ``session_dir`` in their
    command line, and all their descendants."""
    out: list[psutil.Process] = []
    try:
        roots = [c for c in driver.children() if _in_session(c, session_dir)]
    except psutil.Error:
        return out
    for root in roots:
        out.append(root)
        try:
            out.extend(root.children(recursive=True))
        except psutil.Error:
            continue
    return out


def end_processes(procs: Iterable[psutil.Process], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM the processes that still run (same PID and start time), SIGKILL them after
    ``grace_s``. Returns the PIDs that were signalled."""
    alive = [p for p in procs if p.is_running()]
    signalled: list[int] = []
    for p in alive:
        try:
            p.terminate()
            signalled.append(p.pid)
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            continue
    return signalled


def watch(driver_pid: int, session_dir: str, poll_s: float = POLL_S) -> list[int]:
    """Watch the driver until it or its session ends; end what is left of the session.

    Returns:
        The PIDs that had to be signalled (empty after a clean shutdown).
    """
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return []
    me = os.getpid()
    members: dict[tuple[int, float], psutil.Process] = {}
    while True:
        try:
            live = session_processes(driver, session_dir) if driver.is_running() else []
        except psutil.Error:
            live = []
        for p in live:
            if p.pid == me:  # the reaper itself, forked from a launcher recorded in a race
                continue
            try:
                members.setdefault((p.pid, p.create_time()), p)
            except psutil.Error:
                continue
        if not live:  # the driver died, or it shut Ray down (the roots are gone)
            break
        time.sleep(poll_s)
    return end_processes(members.values())


def main(argv: list[str]) -> int:
    """Entry point: ``reaper.py DRIVER_PID SESSION_DIR`` (forks, the parent returns at once)."""
    if len(argv) != 2:
        print("usage: reaper.py DRIVER_PID SESSION_DIR", file=sys.stderr)
        return 2
    if os.fork():
        return 0
    os.chdir("/")  # hold no directory of the driver's
    driver_pid, session_dir = int(argv[0]), argv[1]
    ended = watch(driver_pid, session_dir)
    if ended:
        log = Path(session_dir) / "logs" / "lesionsweep_reaper.log"
        try:
            with log.open("a") as f:
                f.write(f"driver {driver_pid} gone; ended leftover Ray processes {ended}\n")
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
