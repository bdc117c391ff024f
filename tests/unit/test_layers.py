"""The house's layers, one way down: cli -> sweep -> training -> data, metrics -> methods.

``methods/`` imports only torch, timm, numpy, the standard library and ``lesionsweep.errors``;
every other project import points to the same layer or a lower one, and no import of a project
module hides inside a function except the few allowed ones (optional heavy dependencies).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: rank of each top-level part of the ``lesionsweep`` package (higher may import lower)
RANKS = {
    "methods": 0,
    "errors": 0,
    "values": 1,
    "fileio": 1,
    "ranking": 1,
    "config": 1,
    "cluster": 1,
    "search_spaces": 1,
    "data": 2,
    "metrics": 2,
    "training": 3,
    "sweep": 4,
    "cli": 5,
}
#: function-local imports of project modules that are allowed (each documented where it is)
LOCAL_IMPORT_BUDGET = 5
#: huggingface_hub is timm's own hub client (backbones force it offline)
METHODS_MAY_IMPORT = {"torch", "timm", "numpy", "huggingface_hub", "lesionsweep"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "platform":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["lesionsweep", *parts])


def _files() -> list[Path]:
    out = []
    for folder in ("platform", "methods", "cluster", "search_spaces"):
        out += sorted((ROOT / folder).rglob("*.py"))
    return out


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(absolute module, inside a function, line)`` for every import in ``path``."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_func, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                out.append((mod, in_func, child.lineno))
            visit(child, func)

    visit(tree, False)
    return out


def _part(module: str) -> str | None:
    """The layer of a ``lesionsweep...`` module (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "lesionsweep":
        return None
    return parts[1] if len(parts) > 1 else "lesionsweep"


def test_methods_import_only_torch_timm_numpy_and_errors() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = []
    for f in sorted((ROOT / "methods").rglob("*.py")):
        for mod, _, line in _imports(f):
            top = mod.split(".")[0]
            if top in stdlib:
                continue
            if top not in METHODS_MAY_IMPORT:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
            elif top == "lesionsweep" and _part(mod) not in ("methods", "errors"):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert bad == []


def test_every_project_import_points_down() -> None:
    bad = []
    for f in _files():
        here = _part(_module_name(f))
        if here not in RANKS:
            continue
        for mod, _, line in _imports(f):
            there = _part(mod)
            if there is None or there == "lesionsweep" or there == here:
                continue
            assert there in RANKS, f"{mod}: give it a layer in RANKS"
            if RANKS[there] > RANKS[here]:
                bad.append(f"{f.relative_to(ROOT)}:{line} ({here}) imports {mod} ({there})")
    assert bad == []


def test_no_cycle_is_hidden_in_a_function() -> None:
    local = [
        f"{f.relative_to(ROOT)}:{line} {mod}"
        for f in _files()
        for mod, in_func, line in _imports(f)
        if in_func and _part(mod) is not None
    ]
    assert len(local) <= LOCAL_IMPORT_BUDGET, local


def test_the_sweep_driver_never_imports_timm_or_torchvision() -> None:
    """The driver validates every config (it loads the method classes) but never builds a
    model: timm and the torchvision it imports (~190 MB resident) stay out of it, which keeps
    the driver under bench_driver's 1 GB at 10,000 trials."""
    code = (
        "import sys\n"
        "from lesionsweep import cli\n"
        "from lesionsweep.sweep import backend, commands\n"
        "from lesionsweep.sweep.spec import load_spec\n"
        "spec = load_spec(None, {'budget.trials': 3})\n"
        "backend.build_sampler(spec)\n"
        "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
