"""The researcher's commands on a finished (or running) sweep, as ``argparse`` sub-commands.

* ``lesionsweep report SWEEP [--out FILE] [--by PARAM] [--top K] [--images N]``
* ``lesionsweep leaderboard SWEEP [--by PARAM] [--top K]``
* ``lesionsweep study SPEC [--seeds S] [--top-k K] [--force]``
"""

from __future__ import annotations

import argparse
from typing import Any

from .commands import add_spec_set_option
from .leaderboard import build_leaderboard, format_table
from .report.data import load_sweep
from .report.html import write_report
from .report.render import render_in_chromium
from .study import run_study

__all__ = ["add_subparsers"]


def _cmd_report(args: argparse.Namespace) -> int:
    res = write_report(args.sweep, out=args.out, by=args.by, top=args.top, n_images=args.images)
    print(f"{res.path}  ({res.size_bytes / 1e6:.1f} MB, written in {res.seconds:.1f} s)")
    if args.screenshot:
        shot = res.path.with_suffix(".png")
        check = render_in_chromium(res.path, shot)
        print(f"{shot}  (headless Chromium: {check.plots} plotly figure(s) drawn)")
        if check.script_errors:
            print("script errors:\n" + "\n".join(check.script_errors))
            return 1
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    print(format_table(build_leaderboard(load_sweep(args.sweep), by=args.by, top=args.top)))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    res = run_study(
        args.spec,
        overrides=args.set,
        seeds=args.seeds,
        top_k=args.top_k,
        force=args.force,
        num_cpus=args.num_cpus,
        progress=not args.quiet,
        n_boot=args.bootstrap,
    )
    print(res.table)
    print(f"\n{res.parquet}\n{res.markdown}")
    return 0


def add_subparsers(sub: Any) -> None:
    """Register ``report``, ``leaderboard`` and ``study`` on the CLI's sub-parsers."""
    r = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a sweep (plots, leaderboard, maps)",
        description="One HTML file that opens offline: leaderboard, optimization history, "
        "parallel coordinates, parameter importance, learning curves, Pareto front, "
        "localization maps of the best trials. Default: <sweep>/report.html.",
    )
    r.add_argument("sweep", help="the sweep folder")
    r.add_argument("--out", help="output HTML file (default: <sweep>/report.html)")
    r.add_argument("--by", help="group the leaderboard by this parameter (e.g. method.pooling)")
    r.add_argument(
        "--top",
        type=int,
        help="leaderboard rows per group (default 20); maps of the top K trials "
        "(default: the best trial of each method)",
    )
    r.add_argument("--images", type=int, default=4, help="validation films in the maps panel")
    r.add_argument(
        "--screenshot",
        action="store_true",
        help="also render it in headless Chromium and save report.png next to it",
    )
    r.set_defaults(func=_cmd_report)

    lb = sub.add_parser(
        "leaderboard", help="rank a sweep's trials on its objective (terminal table)"
    )
    lb.add_argument("sweep", help="the sweep folder")
    lb.add_argument("--by", help="rank within each value of this parameter (e.g. method.pooling)")
    lb.add_argument("--top", type=int, default=10, help="rows per group (default 10)")
    lb.set_defaults(func=_cmd_leaderboard)

    s = sub.add_parser(
        "study",
        help="the WSOL protocol end to end: sweep, retrain the top configs with seeds, "
        "evaluate each once on test-loc",
        description="(1) the sweep of SPEC (selection on the validation localization split); "
        "(2) the top K configs of each method retrained with S seeds; (3) each evaluated once "
        "on test-loc (a ledger keeps the test split sealed); (4) <sweep>/study/final.parquet "
        "and final.md. Re-running continues where it stopped.",
    )
    s.add_argument("spec", nargs="?", help="sweep spec YAML (default: the built-in demo)")
    add_spec_set_option(s)
    s.add_argument("--seeds", type=int, default=3, help="retraining seeds per config (default 3)")
    s.add_argument("--top-k", type=int, default=1, help="configs per method (default 1)")
    s.add_argument(
        "--force", action="store_true", help="allow evaluating an already-evaluated config again"
    )
    s.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples for the CIs (default 200)"
    )
    s.add_argument("--num-cpus", type=int, help="logical CPUs of the local Ray (default: all)")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=_cmd_study)
