"""The package layout: platform/ must not shadow the standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_not_shadowed_from_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import platform, uuid; print(platform.system())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


def test_stdlib_platform_not_shadowed_with_python_m() -> None:
    # `python -m` puts the repo root first on sys.path
    out = subprocess.run([sys.executable, "-m", "uuid"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_no_init_in_platform_and_no_generic_top_level_names(tmp_path: Path) -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    # from a neutral folder (not the repo root), only `lesionsweep` is importable from us
    code = (
        "import importlib.util, lesionsweep, pathlib\n"
        "print(pathlib.Path(list(lesionsweep.__path__)[0]).name)\n"
        "for g in ('methods', 'cluster', 'search_spaces', 'data', 'metrics', 'platform'):\n"
        "    s = importlib.util.find_spec(g)\n"
        "    print(g, s.origin if s else None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "platform"
    for line in out[1:]:
        name, origin = line.split(" ", 1)
        assert origin == "None" or str(ROOT) not in origin, line


def test_subpackages_import() -> None:
    import lesionsweep.cluster  # noqa: F401
    import lesionsweep.methods
    import lesionsweep.search_spaces  # noqa: F401

    assert "bce" in lesionsweep.methods.loss_names()
