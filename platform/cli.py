"""The ``lesionsweep`` command line.

Every user-facing error (:class:`lesionsweep.errors.LesionSweepError`, a bad file, an unknown key)
is printed as one clear line on stderr with a non-zero exit code; tracebacks are kept for real
bugs (or shown with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import DataConfig, config_from_dict, load_config, merge_flat, parse_overrides
from .data import SPLITS, build_cache
from .data.phantom import save_preview
from .data.sources import DATASETS
from .errors import LesionSweepError
from .methods import loss_names, loss_params, method_names, method_params
from .sweep.commands import add_subparsers as add_sweep_commands
from .sweep.research_commands import add_subparsers as add_research_commands
from .training import evaluate, run_training

#: the one ``--set`` convention of every command: a dotted path into the YAML file it reads
SET_METAVAR = "PATH=VALUE"
SET_HELP = (
    "override one value of the {what}: a dotted PATH into its YAML and a YAML VALUE, e.g. "
    "{example} (repeatable)"
)
CONFIG_SET_HELP = SET_HELP.format(
    what="run config", example="optim.lr=1e-3, method.pooling=lse, data.options.num_train=32"
)


def add_set_option(parser: argparse.ArgumentParser, help_text: str = CONFIG_SET_HELP) -> None:
    """The ``--set PATH=VALUE`` option (same name, syntax and parser for every command)."""
    parser.add_argument("--set", action="append", metavar=SET_METAVAR, help=help_text)


#: metric names (after the ``<split>/`` prefix) the compact tables of train / evaluate show
HEADLINE = (
    "loss",
    "auroc_macro",
    "point_acc_micro",
    "iobb@0.5",
    "maxboxacc_v2",
    "pxap",
    "dice_pooled",
    "dice_per_image",
    "hit_rate",
    "miou",
    "shortcut_pointing",
)


def headline_table(metrics: Mapping[str, Any], title: str) -> str:
    """A compact two-column table of the headline keys present in ``metrics`` (any split
    prefix), e.g. ``val/auroc_macro``; the full set goes to a file or ``--json``."""
    rows = [
        (k, v)
        for k, v in metrics.items()
        if "/" in k and k.split("/", 1)[1] in HEADLINE and isinstance(v, (int, float))
    ]
    rows.sort(key=lambda kv: (kv[0].split("/", 1)[0], HEADLINE.index(kv[0].split("/", 1)[1])))
    width = max([len(k) for k, _ in rows] + [len(title)])
    lines = [title, "-" * (width + 12)]
    lines += [f"{k:<{width}}  {v:>10.4f}" for k, v in rows]
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, overrides=parse_overrides(args.set))
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    res = run_training(cfg, out, resume=not args.no_resume, progress=True)
    summary = {
        "out_dir": str(res.out_dir),
        "best_epoch": res.best_epoch,
        "best": res.best,
        "final": res.final,
        "wall_time_s": round(res.wall_time_s, 2),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(headline_table(res.best, f"best epoch {res.best_epoch} of {res.epochs_run}"))
    print(
        f"run folder {res.out_dir} ({res.wall_time_s:.0f} s): every epoch's metrics in "
        f"metrics.jsonl, TensorBoard in tensorboard/; --json prints them all"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    source: Any = args.source
    if Path(source).suffix in (".yaml", ".yml"):
        source = load_config(source, overrides=parse_overrides(args.set))
    metrics = evaluate(
        source,
        args.split,
        out_path=args.out,
        batch_size=args.batch_size,
        device=args.device,
        which=args.which,
    )
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    print(headline_table(metrics, f"{args.split}: {args.source}"))
    where = f"all {len(metrics)} metrics in {args.out}" if args.out else "--out FILE keeps them all"
    print(f"{where}; --json prints them")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    if args.config:
        data_cfg = load_config(args.config, overrides=parse_overrides(args.set)).data
    else:
        raw = {
            "data": {
                "dataset": args.dataset,
                "root": args.root,
                "image_size": args.image_size,
                "skip_bad_images": args.skip_bad_images,
            }
        }
        raw = merge_flat(raw, parse_overrides(args.set), "command line")
        data_cfg = config_from_dict(raw, source="command line").data
    assert isinstance(data_cfg, DataConfig)
    splits = tuple(args.splits.split(",")) if args.splits else None
    kwargs = {"splits": splits} if splits else {}
    path = build_cache(data_cfg, args.out, **kwargs)
    print(f"cache written to {path}")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    save_preview(args.out, n=args.n, image_size=args.image_size, seed=args.seed)
    print(f"phantom preview written to {args.out}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    for name in method_names():
        params = ", ".join(f"{k}={p.default!r}" for k, p in method_params(name).items())
        print(f"method {name}: {params}")
    for name in loss_names():
        params = ", ".join(f"{k}={p.default!r}" for k, p in loss_params(name).items())
        print(f"loss {name}: {params}")
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("lesionsweep")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lesionsweep",
        description="Hyperparameter sweeps for weakly supervised lesion localization on CXRs.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    p.add_argument("--version", action="version", version=f"lesionsweep {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one config (YAML) without Ray")
    t.add_argument(
        "config", help="run config YAML (sections method, loss, data, optim, train, eval)"
    )
    t.add_argument("--out", help="run folder (default: runs/<config stem>)")
    add_set_option(t)
    t.add_argument(
        "--no-resume", action="store_true", help="start over even if the run folder has a run"
    )
    t.add_argument("--json", action="store_true", help="print the best and final metrics as JSON")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a run folder, checkpoint or config on a split "
        "(the only way to touch a test split)",
    )
    e.add_argument("source", help="run folder, checkpoint .pt, or config .yaml")
    e.add_argument(
        "--split",
        required=True,
        choices=SPLITS,
        help="the split to evaluate, named explicitly (a test split is evaluated only here)",
    )
    e.add_argument("--out", help="also write every metric as JSON to this file")
    e.add_argument(
        "--batch-size", type=int, help="evaluation batch size (default: eval.batch_size)"
    )
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    e.add_argument(
        "--which",
        choices=("best", "last"),
        default="best",
        help="checkpoint of a run folder (default: best)",
    )
    e.add_argument("--json", action="store_true", help="print every metric as JSON")
    add_set_option(e)
    e.set_defaults(func=_cmd_evaluate)

    c = sub.add_parser("cache", help="resize a dataset once into a fast on-disk cache")
    c.add_argument("out", help="cache folder to create")
    c.add_argument("--config", help="take the data section of this run config")
    c.add_argument(
        "--dataset", default="phantom", choices=DATASETS.names(), help="dataset (default: phantom)"
    )
    c.add_argument("--root", help="folder with the dataset's official files (not for phantom)")
    c.add_argument("--image-size", type=int, default=256, help="side of the cached images (256)")
    c.add_argument("--splits", help="comma-separated splits (default: all the dataset has)")
    c.add_argument(
        "--skip-bad-images", action="store_true", help="skip (and list) unreadable images"
    )
    add_set_option(c)
    c.set_defaults(func=_cmd_cache)

    pv = sub.add_parser("preview", help="write a PNG grid of synthetic phantoms with their boxes")
    pv.add_argument("--out", default="phantom_preview.png", help="PNG path (phantom_preview.png)")
    pv.add_argument("--n", type=int, default=8, help="number of films (default: 8)")
    pv.add_argument("--image-size", type=int, default=256, help="film side in pixels (256)")
    pv.add_argument("--seed", type=int, default=0, help="phantom seed (default: 0)")
    pv.set_defaults(func=_cmd_preview)

    m = sub.add_parser("methods", help="list registered methods and losses with their defaults")
    m.set_defaults(func=_cmd_methods)

    add_sweep_commands(sub)  # sweep, resume, export, compact (Ray is imported when one runs)
    add_research_commands(sub)  # report, leaderboard, study
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LesionSweepError as e:
        if args.debug:
            raise
        print(f"lesionsweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lesionsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
