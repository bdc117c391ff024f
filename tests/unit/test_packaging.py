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
    out = subprocess.run(
        [sys.executable, "-m", "uuid"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_no_init_in_platform_and_no_generic_top_level_names() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    import importlib.util

    import lesionsweep

    assert Path(list(lesionsweep.__path__)[0]).name == "platform"
    for generic in ("methods", "cluster", "search_spaces", "data", "metrics"):
        spec = importlib.util.find_spec(generic)
        # only acceptable if it resolves to something outside this repo (not installed by us)
        if spec is not None and spec.origin:
            assert ROOT not in Path(spec.origin).resolve().parents, generic


def test_subpackages_import() -> None:
    import lesionsweep.cluster  # noqa: F401
    import lesionsweep.methods
    import lesionsweep.search_spaces  # noqa: F401

    assert "bce" in lesionsweep.methods.loss_names()
