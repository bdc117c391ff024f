"""The sweep commands: plain functions plus their ``argparse`` sub-commands.

* :func:`run_sweep` — ``lesionsweep sweep [SPEC] [--set k=v] [--address A]``
* :func:`resume_sweep` — ``lesionsweep resume SWEEP``
* :func:`export_configs` — ``lesionsweep export SWEEP [--top-k K] [--per-method] [--pareto]``
* :func:`compact_sweep` — ``lesionsweep compact SWEEP`` (merge live fragments into the tables)

``sweep`` and ``resume`` exit 1 when no trial completed (the distinct failure reasons are
printed), 130 when interrupted.

Ray is imported only when a sweep actually runs (through :mod:`.backend`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..cluster import profile_path
from ..errors import ConfigError
from ..values import read_yaml
from .backbone_check import BackboneCheck
from .datacache import prepare_sweep_data
from .export import SPEC_FILE, Exported, export_sweep
from .results import read_table
from .spec import SweepSpec, load_spec, parse_overrides, spec_from_dict
from .storage import SweepLocation
from .store import compact
from .summary import SweepSummary, summarize

__all__ = [
    "run_sweep",
    "resume_sweep",
    "export_configs",
    "compact_sweep",
    "add_subparsers",
    "load_sweep_spec",
    "profile_overrides",
]


def _auto_export(spec: SweepSpec, root: str) -> list[str]:
    """Export the best config overall and per method (or the Pareto front) after a sweep."""
    loc = SweepLocation(root)
    if not loc.is_local:
        return []
    out: list[Exported] = []
    try:
        if spec.objective.multi:
            out = export_sweep(root, pareto=True)
        else:
            out = export_sweep(root, top_k=1)
            methods = {r for r in _methods(root)}
            if len(methods) > 1:
                out += export_sweep(root, top_k=1, per_method=True)
    except ConfigError:
        return []  # nothing completed yet
    return [str(e.path) for e in out]


def _methods(root: str) -> list[str]:
    t = read_table(SweepLocation(root))
    return sorted(set(t.column("method").to_pylist())) if t.num_rows else []


def _run(
    spec: SweepSpec,
    address: str | None,
    restore: bool,
    retry_failed: bool = False,
    progress: bool = True,
    num_cpus: int | None = None,
    on_connected: Callable[[], None] | None = None,
    preflight: Callable[[], None] | None = None,
) -> SweepSummary:
    from . import backend  # Ray: imported only when a sweep runs (seconds of start-up)

    root = spec.location.root
    t0 = time.monotonic()
    started = backend.init_ray(address, num_cpus=num_cpus)  # ConfigError before any write
    try:
        if preflight is not None:  # checks that ran while Ray started; still nothing written
            preflight()
        # connected: the data first (a refused data config writes no sweep.yaml), then the spec
        spec = prepare_sweep_data(spec, root, progress=progress)  # every trial reads one cache
        if on_connected is not None:
            on_connected()
        records, interrupted, abort = backend.run_tune(
            spec, root, restore=restore, retry_failed=retry_failed, progress=progress
        )
    finally:
        if started:
            backend.shutdown_ray()
    if abort:
        raise ConfigError(f"sweep {spec.name!r} stopped: {abort}")
    exported = _auto_export(spec, root)
    return summarize(
        spec.name,
        root,
        records,
        spec.objective.metrics,
        spec.objective.modes,
        wall_time_s=time.monotonic() - t0,
        exported=exported,
        interrupted=interrupted,
    )


def add_spec_set_option(parser: argparse.ArgumentParser) -> None:
    """The sweep commands' ``--set PATH=VALUE`` (the CLI's one convention, on a sweep spec)."""
    parser.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="override one value of the sweep spec: a dotted PATH into its YAML and a YAML "
        "VALUE, e.g. budget.trials=4, base.optim.lr=1e-3, storage=s3://b/p (repeatable)",
    )


def profile_overrides(profile: str) -> dict[str, Any]:
    """A resource profile (shipped name or YAML path) as spec overrides.

    A profile is a partial spec (``resources``, ``concurrency``, ``base``, ``storage``...).
    """
    p = profile_path(profile)
    raw = read_yaml(p, "resource profile", hint="spec keys such as resources, concurrency")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("base", "resources", "budget", "data") and isinstance(v, Mapping):
            for kk, vv in v.items():
                out[f"{k}.{kk}"] = vv
        else:
            out[str(k)] = v
    return out


def run_sweep(
    spec_path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    address: str | None = None,
    progress: bool = True,
    num_cpus: int | None = None,
    profile: str | None = None,
) -> SweepSummary:
    """Run a sweep from a spec file (``None``: the demo sweep).

    Args:
        spec_path: the spec YAML, or None for the built-in demo spec.
        overrides: ``{"budget.trials": 4}`` or ``["budget.trials=4"]`` (applied last).
        address: a Ray cluster address (default: ``RAY_ADDRESS``, else a local in-process Ray).
        progress: print a line per trial event on stderr.
        num_cpus: logical CPUs of a local Ray (default: all).
        profile: a resource profile (``cpu-laptop``, ``shared-gpu``, ``gpu-node``,
            ``ddp-4gpu`` or a YAML path) merged into the spec before ``overrides``.

    Raises:
        ConfigError: invalid spec / spaces, or an existing sweep folder (resume it instead).
    """
    given: Mapping[str, Any] = (
        overrides if isinstance(overrides, Mapping) else parse_overrides(list(overrides or ()))
    )
    merged: dict[str, Any] = profile_overrides(profile) if profile else {}
    merged.update(given)
    spec = load_spec(spec_path, merged)
    loc = spec.location
    if loc.exists(SPEC_FILE) or loc.exists("tuner.pkl"):
        raise ConfigError(
            f"sweep folder {loc.root} already exists: continue it with `lesionsweep resume "
            f"{loc.root}`, or pick another name (--set name=...) or storage"
        )
    backbones = BackboneCheck.start(spec)  # answered while Ray starts

    def write_spec() -> None:  # only once Ray is up: a refused cluster leaves nothing behind
        loc.makedirs()
        loc.write_bytes(SPEC_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
        if progress:
            obj = spec.objective
            objective = ", ".join(f"{m} ({d})" for m, d in zip(obj.metrics, obj.modes, strict=True))
            print(
                f"sweep {spec.name!r}: {spec.budget.trials} trial(s) over space(s) "
                f"{', '.join(spec.spaces.names)}, objective {objective}, folder {loc.root}",
                file=sys.stderr,
                flush=True,
            )

    try:
        return _run(
            spec,
            address,
            restore=False,
            progress=progress,
            num_cpus=num_cpus,
            on_connected=write_spec,
            preflight=backbones.result,
        )
    finally:
        backbones.close()


def load_sweep_spec(sweep: str | Path) -> SweepSpec:
    """The spec stored in a sweep folder (``sweep.yaml``), validated again."""
    loc = SweepLocation.parse(sweep)
    if not loc.exists(SPEC_FILE):
        raise ConfigError(f"{loc.join(SPEC_FILE)}: not found; is {loc.root} a sweep folder?")
    raw = yaml.safe_load(loc.read_bytes(SPEC_FILE).decode()) or {}
    raw["storage"] = loc.storage
    raw["name"] = loc.name
    return spec_from_dict(raw, source=loc.join(SPEC_FILE))


def resume_sweep(
    sweep: str | Path,
    address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    num_cpus: int | None = None,
) -> SweepSummary:
    """Continue an interrupted sweep (Ctrl-C or a killed driver).

    Finished trials are kept; unfinished ones restart with the same trial id and continue after
    their last checkpoint; failed ones stay failed unless ``retry_failed``. ASHA's rungs and the
    pruned trials are reloaded from ``asha_state.jsonl``; the Optuna study from the sweep's
    journal (``optuna.journal``) or ``searcher.storage``.
    """
    spec = load_sweep_spec(sweep)
    if progress:
        print(f"resuming sweep {spec.name!r} in {spec.location.root}", file=sys.stderr, flush=True)
    return _run(
        spec, address, restore=True, retry_failed=retry_failed, progress=progress, num_cpus=num_cpus
    )


def export_configs(
    sweep: str | Path,
    top_k: int = 1,
    per_method: bool = False,
    pareto: bool = False,
    out_dir: str | Path | None = None,
    by: str = "final",
) -> list[Exported]:
    """Write the best trials' run configs (see :func:`lesionsweep.sweep.export.export_sweep`)."""
    return export_sweep(
        sweep, top_k=top_k, per_method=per_method, pareto=pareto, out_dir=out_dir, by=by
    )


# ---------------------------------------------------------------------------------------------
# argparse
# ---------------------------------------------------------------------------------------------


def compact_sweep(sweep: str | Path, all_trials: bool = False) -> tuple[int, int]:
    """Merge a sweep's live fragments into ``trials.parquet`` / ``epochs.parquet``.

    Only finished trials' fragments are merged unless ``all_trials`` (safe while the sweep
    runs). Returns the row counts of the two tables.
    """
    loc = SweepLocation.parse(sweep)
    if not loc.exists(SPEC_FILE):
        raise ConfigError(f"{loc.join(SPEC_FILE)}: not found; is {loc.root} a sweep folder?")
    return compact(loc, only_terminal=not all_trials)


def _exit_code(summary: SweepSummary) -> int:
    if summary.interrupted:
        return 130
    return 1 if summary.none_completed else 0


def _cmd_compact(args: argparse.Namespace) -> int:
    n_trials, n_epochs = compact_sweep(args.sweep, all_trials=args.all)
    print(f"compacted {args.sweep}: {n_trials} trial row(s), {n_epochs} epoch row(s)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    summary = run_sweep(
        args.spec,
        args.set,
        address=args.address,
        progress=not args.quiet,
        num_cpus=args.num_cpus,
        profile=args.profile,
    )
    print(summary.format())
    return _exit_code(summary)


def _cmd_resume(args: argparse.Namespace) -> int:
    summary = resume_sweep(
        args.sweep,
        address=args.address,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        num_cpus=args.num_cpus,
    )
    print(summary.format())
    return _exit_code(summary)


def _cmd_export(args: argparse.Namespace) -> int:
    for e in export_configs(
        args.sweep,
        top_k=args.top_k,
        per_method=args.per_method,
        pareto=args.pareto,
        out_dir=args.out,
        by=args.by,
    ):
        vals = " ".join(f"{k}={v:.4f}" for k, v in e.values.items())
        print(f"{e.path}  [{e.group} #{e.rank}] trial {e.trial_id} ({e.method}) {vals}")
    return 0


def add_subparsers(sub: Any) -> None:
    """Register ``sweep``, ``resume`` and ``export`` on the CLI's sub-parsers."""
    s = sub.add_parser(
        "sweep",
        help="run a hyperparameter sweep (no SPEC: the ~2-minute CPU demo on the phantom)",
        description="Run a sweep spec with Ray Tune + Optuna. Results: <storage>/<name>/"
        "trials.parquet and epochs.parquet; TensorBoard: tensorboard --logdir <storage>/<name>.",
    )
    s.add_argument("spec", nargs="?", help="sweep spec YAML (default: the built-in demo)")
    add_spec_set_option(s)
    s.add_argument(
        "--profile",
        help="resource profile merged into the spec: cpu-laptop, shared-gpu, gpu-node, ddp-4gpu "
        "or a YAML path (see lesionsweep/cluster/README.md)",
    )
    s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    s.add_argument("--num-cpus", type=int, help="logical CPUs of the local Ray (default: all)")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=_cmd_sweep)

    r = sub.add_parser("resume", help="continue an interrupted sweep (Ctrl-C or killed driver)")
    r.add_argument("sweep", help="the sweep folder (<storage>/<name>) or its URI")
    r.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    r.add_argument("--num-cpus", type=int, help="logical CPUs of the local Ray (default: all)")
    r.add_argument(
        "--retry-failed",
        action="store_true",
        help="also re-run trials that crashed past max_failures (a deterministic failure such as "
        "a non-finite loss is final)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_cmd_resume)

    e = sub.add_parser("export", help="write the best trials' run configs as YAML")
    e.add_argument("sweep", help="the sweep folder")
    e.add_argument("--top-k", type=int, default=1, help="configs per group (default 1)")
    e.add_argument("--per-method", action="store_true", help="rank each method separately")
    e.add_argument("--pareto", action="store_true", help="the Pareto front (multi-objective)")
    e.add_argument(
        "--by",
        choices=("final", "best"),
        default="final",
        help="rank on the final (default) or the best epoch's value",
    )
    e.add_argument("--out", help="output folder (default: <sweep>/exports)")
    e.set_defaults(func=_cmd_export)

    c = sub.add_parser(
        "compact",
        help="merge a sweep's live per-trial fragments (results/) into trials.parquet and "
        "epochs.parquet",
    )
    c.add_argument("sweep", help="the sweep folder")
    c.add_argument(
        "--all",
        action="store_true",
        help="also running trials' fragments (only when no driver runs the sweep)",
    )
    c.set_defaults(func=_cmd_compact)
