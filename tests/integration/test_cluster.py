"""A sweep's Ray session as a user runs it from the CLI, each in its own driver process.

* a local sweep listens on loopback only and writes no token file;
* a SIGKILLed driver leaves no Ray process of its session behind;
* the multi-node check of ``cluster/README.md``: two raylets started with ``ray start`` (their own
  temp dirs and ports, token auth), a sweep with ``--address`` whose trials run on the worker
  node (the head has 0 CPUs, as in the recipes), and a driver without the token refused with
  one message, exit 2 and nothing written.

Only processes these tests started are ever signalled, by PID (never ``ray stop``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
BIN = Path(sys.executable).parent


def _cli(name: str) -> list[str]:
    exe = BIN / name
    if exe.is_file():
        return [str(exe)]
    mod = {"lesionsweep": "lesionsweep.cli", "ray": "ray.scripts.scripts"}[name]
    return [sys.executable, "-c", f"import sys; from {mod} import main; sys.exit(main())"]


def _spec(tmp_path: Path, name: str, epochs: int = 1, trials: int = 1) -> Path:
    body = {
        "name": name,
        "data": {
            "dataset": "phantom",
            "image_size": 64,
            "options": {"num_train": 32, "num_val": 16},
        },
        "base": {
            "method.name": "cam",
            "method.backbone": "test_resnet",
            "train.epochs": epochs,
            "train.batch_size": 16,
            "train.device": "cpu",
            "eval.batch_size": 16,
        },
        "spaces": [
            {
                "name": "cam",
                "base": {"method.name": "cam"},
                "parameters": {"optim.lr": {"float": [1e-3, 1e-2], "log": True}},
            }
        ],
        "objective": {"metric": "val/auroc_macro", "mode": "max"},
        "budget": {"trials": trials},
        "concurrency": trials,
        "storage": str(tmp_path / "sweeps"),
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", **extra)
    return env


class Tree:
    """The processes below a root process, recorded while it lives (PID + start time)."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.listening: set[tuple[str, str, int]] = set()

    def poll(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                self.seen.setdefault((p.pid, p.create_time()), p)
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        self.listening.add((p.name(), c.laddr.ip, c.laddr.port))
            except psutil.Error:
                continue

    def alive(self) -> list[psutil.Process]:
        out = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:  # ended between the two looks
                continue
        return out

    def end(self) -> None:
        for p in self.alive():
            try:
                p.kill()
            except psutil.Error:
                pass


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"


def _run_polling(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, Tree]:
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tree = Tree(proc.pid)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            tree.poll()
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=60)[0]
    finally:
        tree.end()
    return proc.returncode, out, tree


def test_local_sweep_listens_on_loopback_only_and_writes_no_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    spec = _spec(tmp_path, "lo")
    cmd = [*_cli("lesionsweep"), "sweep", str(spec), "--num-cpus", "1", "--quiet"]
    rc, out, tree = _run_polling(cmd, _env(home), timeout=400)
    assert rc == 0, out[-3000:]
    names = {n for n, _, _ in tree.listening}
    print("listening:", sorted(tree.listening))
    assert {"gcs_server", "raylet"} <= names, tree.listening  # the check saw Ray's servers
    beyond = sorted(s for s in tree.listening if s[1] not in LOOPBACK)
    assert beyond == [], f"listening beyond loopback: {beyond}"
    assert not (home / ".ray" / "auth_token").exists()  # the per-sweep token never hits disk
    t = pq.read_table(tmp_path / "sweeps" / "lo" / "trials.parquet")
    assert t.num_rows == 1 and t.column("status").to_pylist() == ["completed"]


def test_killed_driver_leaves_no_ray_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    spec = _spec(tmp_path, "kill", epochs=50)
    cmd = [*_cli("lesionsweep"), "sweep", str(spec), "--num-cpus", "1", "--quiet"]
    proc = subprocess.Popen(
        cmd, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    tree = Tree(proc.pid)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:  # until a trial has trained an epoch
            tree.poll()
            if list((tmp_path / "sweeps" / "kill").rglob("metrics.jsonl")):
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        tree.poll()
        names = sorted(_name(p) for p in tree.alive() if p.pid != proc.pid)
        assert {"gcs_server", "raylet", "ray::DashboardAgent"} <= set(names), names
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while tree.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, _name(p)) for p in tree.alive()]
        print(f"session processes before the kill: {len(names)} {names}; left after: {left}")
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
        tree.end()


# --- the multi-node check of cluster/README.md ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    return [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _active_nodes(address: str, env: dict[str, str]) -> int:
    r = subprocess.run(
        [*_cli("ray"), "status", "--address", address], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    active, n = False, 0
    for line in r.stdout.splitlines():
        if line.startswith("Active:"):
            active = True
        elif line and not line.startswith(" "):
            active = False
        elif active and "node_" in line:
            n += 1
    return n


@pytest.fixture(scope="module")
def two_raylets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """``ray start --head`` (0 CPUs) + ``ray start --address`` (2 CPUs) on this machine, token
    auth on, each with its own temp dir and ports; yields (address, env with the token)."""
    # short: Ray's socket paths (<temp-dir>/session_<date>_<pid>/sockets/plasma_store) must fit
    # AF_UNIX's 107 bytes, and pytest's numbered temp folders grow on a long-lived machine
    base = Path(tempfile.mkdtemp(prefix="lsr", dir="/tmp"))
    token = base / "token"
    old = os.umask(0o077)
    try:
        token.write_text(os.urandom(32).hex())
    finally:
        os.umask(old)
    env = _env(base, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    address = f"127.0.0.1:{_free_port()}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [
        *_cli("ray"), "start", "--head", f"--port={address.split(':')[1]}",
        f"--temp-dir={base / 'head'}", "--num-cpus=0", "--include-dashboard=false",
        f"--ray-client-server-port={_free_port()}", *common, *_node_ports(),
    ]  # fmt: skip
    worker = [
        *_cli("ray"), "start", f"--address={address}", f"--temp-dir={base / 'worker'}",
        "--num-cpus=2", *common, *_node_ports(),
    ]  # fmt: skip
    trees: list[Tree] = []
    try:
        for cmd, want in ((head, 1), (worker, 2)):
            log = open(base / f"{len(trees)}.log", "w")  # noqa: SIM115 (kept open for the node)
            p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            trees.append(Tree(p.pid))
            t0 = time.monotonic()
            while _active_nodes(address, env) < want:
                assert p.poll() is None, (base / f"{len(trees) - 1}.log").read_text()[-3000:]
                assert time.monotonic() - t0 < 120, f"{want} node(s) not up within 120 s"
                time.sleep(1)
            for t in trees:
                t.poll()
        yield address, env
    finally:
        for t in trees:
            t.poll()
        for t in reversed(trees):  # what the README says: SIGTERM to each `ray start --block`
            t.root.terminate()
        deadline = time.monotonic() + 30
        while any(t.alive() for t in trees) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, _name(p)) for t in trees for p in t.alive()]
        for t in trees:
            t.end()
        shutil.rmtree(base, ignore_errors=True)
        assert left == [], f"still running after SIGTERM to `ray start --block`: {left}"


def test_driver_without_the_token_is_refused_cleanly(
    two_raylets: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, _ = two_raylets
    home = tmp_path / "home"
    home.mkdir()
    spec = _spec(tmp_path, "notoken")
    loose = tmp_path / "loose_token"  # a wrong token in a file others can read
    loose.write_text("wrong")
    loose.chmod(0o644)
    for env in (
        _env(home),
        _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="wrong"),
        _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(loose)),
    ):
        r = subprocess.run(
            [*_cli("lesionsweep"), "sweep", str(spec), "--address", address],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        print(r.stderr)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("lesionsweep: error:")]
        errors += [ln for ln in lines if ln.endswith("made it private (0600)")]
        assert sorted(lines) == sorted(errors), r.stderr  # one message (+ the chmod), no traceback
        assert len(errors) == 1 + ("RAY_AUTH_TOKEN_PATH" in env), r.stderr
        assert "token" in errors[0] and address in errors[0]
        assert not (tmp_path / "sweeps" / "notoken").exists()  # nothing written: no sweep.yaml
    assert loose.stat().st_mode & 0o777 == 0o600  # the token file the driver read is private now


def test_sweep_on_two_raylets_runs_trials_on_the_worker_node(
    two_raylets: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, env = two_raylets
    spec = _spec(tmp_path, "multinode", trials=2)
    r = subprocess.run(
        [*_cli("lesionsweep"), "sweep", str(spec), "--address", address, "--quiet"],
        env=env, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    t = pq.read_table(tmp_path / "sweeps" / "multinode" / "trials.parquet")
    assert t.num_rows == 2 and set(t.column("status").to_pylist()) == {"completed"}
    assert _active_nodes(address, env) == 2  # the sweep left both raylets up
