"""The reaper of a local Ray session ends only that session's processes (no Ray needed).

A stand-in driver starts one child whose command line names the session folder (as Ray's GCS and
raylet do), which starts a grandchild with a bland command line (as the raylet's agents are),
and one unrelated child. When the driver is SIGKILLed, the session child and the grandchild are
ended; the unrelated child is left alone. So is a stand-in for the reaper's own launcher, whose
command line names the session folder too: recording it (and the reaper forked from it) made
the reaper SIGTERM itself before the agents (the CLI-driver orphan bug of 2026-11-30).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from lesionsweep.sweep._ray import reaper

DRIVER = r"""
import subprocess, sys, time
session = sys.argv[1]
member = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "time.sleep(300)", f"--log_dir={session}/logs"])
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "/elsewhere"])
launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[2],
    "1", session])
print(member.pid, other.pid, launcher.pid, flush=True)
time.sleep(300)
"""


def test_reaper_ends_the_session_and_nothing_else(tmp_path: Path) -> None:
    session = str(tmp_path / "session_2026-01-01_00-00-00_000000_1")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, session, str(Path(reaper.__file__).resolve())],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = map(int, driver.stdout.readline().split())  # type: ignore[union-attr]
    member, other, launcher = (psutil.Process(pid) for pid in pids)
    deadline = time.monotonic() + 30
    while not member.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = member.children()[0]
    procs = [member, grandchild, other, launcher]
    ended: list[int] = []
    watcher = threading.Thread(target=lambda: ended.extend(reaper.watch(driver.pid, session, 0.2)))
    try:
        watcher.start()
        time.sleep(1.0)  # the watcher records the session while the driver lives
        assert [p.pid for p in reaper.session_processes(psutil.Process(driver.pid), session)] == [
            member.pid,
            grandchild.pid,
        ]
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        watcher.join(30)
        assert not watcher.is_alive()
        assert sorted(ended) == sorted([member.pid, grandchild.pid])
        assert not member.is_running() and not grandchild.is_running()
        assert other.is_running()  # not proven to belong to the session: left alone
        assert launcher.is_running()  # a reaper is never a member of the session
    finally:
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        if driver.poll() is None:
            driver.kill()


def test_reaper_exits_quietly_after_a_clean_shutdown(tmp_path: Path) -> None:
    session = str(tmp_path / "session_x")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", f"--session-dir={session}"]
    )
    ended: list[int] = []
    watcher = threading.Thread(target=lambda: ended.extend(reaper.watch(_self_pid(), session, 0.2)))
    try:
        watcher.start()
        time.sleep(1.0)
        child.terminate()  # the session's processes end (ray.shutdown()); the driver lives on
        child.wait(10)
        watcher.join(30)
        assert not watcher.is_alive() and ended == []
    finally:
        if child.poll() is None:
            child.kill()


def _self_pid() -> int:
    return psutil.Process().pid
