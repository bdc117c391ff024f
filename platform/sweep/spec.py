"""The sweep spec: one YAML file (plus command-line overrides) that says what to search and how.

Example (every key optional except what differs from the defaults)::

    name: pooling-vs-loss           # sweep folder name under `storage`
    description: CAM poolings and losses on the phantom
    data:                           # the run config's data section, applied to every trial
      dataset: phantom
      image_size: 64
      options: {num_train: 64, num_val: 32}
    base:                           # flat run-config values applied to every trial
      train.epochs: 4
      method.backbone: test_resnet
    spaces: [cam, loss_study]       # shipped names, paths (relative to this file) or inline spaces
    space_selection: round_robin    # or `searched` (see SpaceSet)
    objective: {metric: val/auroc_macro, mode: max}
    # multi-objective: {metrics: [val/auroc_macro, val/pxap], modes: [max, max]}
    searcher: tpe                   # tpe | random | grid | cmaes | gp | nsga2 | qmc, or
                                    # {name: tpe, n_startup_trials: 5} (sampler options;
                                    # tpe also max_history: 500, the finished trials it models)
                                    # storage: an Optuna RDB URL for the study (default: the
                                    # journal file <sweep>/optuna.journal)
    early_stopping: {scheduler: asha, metric: val/auroc_macro, mode: max,
                     grace_period: 1, reduction_factor: 2}    # or `none`
    budget: {trials: 16, time_s: 3600}
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0.5}
    concurrency: 4                  # trials running at once
    seed: 0                         # sampler seed and every trial's train.seed
    storage: sweeps                 # local folder, shared filesystem, or s3://... URI
    max_failures: 2                 # retries of a trial whose worker/node died (it continues from
                                    # its last checkpoint); a failing config is not retried
    data_cache: sweep               # sweep | none | a folder: where the data is cached once
                                    # for all trials (see lesionsweep.sweep.datacache)

Precedence for each trial's run config, lowest first: code defaults < the space's ``base`` <
the spec's ``data`` < the spec's ``base`` < the drawn parameters. Two rules keep this from
being silent:

* a spec ``base`` key that a space also searches *pins* that parameter (it takes the spec
  value; conditions still see it); a spec ``data`` value is a default that a space's parameter
  of the same key overrides (a space may give PYLON 256 px while the other methods keep the
  spec's size);
* a spec ``data`` value that contradicts a space's own ``base`` (e.g. ``data.image_size: 128``
  against the PYLON space's ``data.image_size: 256``) is an error: a space's ``base`` states what
  its method needs. To override it deliberately, set the key in the spec's ``base``
  (``base: {data.image_size: 512}``); every method/image-size combination a space can reach is
  still checked against the method's ``input_multiple`` before launch.

``train.seed`` defaults to the spec's ``seed``. Before launch every space is validated with the
spec applied (keys, value types and bounds, method/size combinations, whole trial configs) and
the dataset root of every non-synthetic dataset a trial can use must exist.

The test split is never reachable from a sweep: ``eval.split`` may not name a test split
(:func:`lesionsweep.config.config_from_dict` refuses it) and the sweep never calls
``lesionsweep evaluate``.

Overrides (``--set PATH=VALUE``, as for every command) are dotted paths into this YAML with
YAML values: ``budget.trials=4``, ``base.optim.lr=1e-3``, ``spaces=[cam,pylon]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from ..config import (
    RunConfig,
    TrainConfig,
    config_from_flat,
    parse_overrides,
)
from ..errors import ConfigError, check_keys
from ..values import Range, convert, parse_yaml_mapping, plain, read_yaml
from .datakey import check_data_cache, data_key
from .samplers import MULTI_OBJECTIVE, SAMPLERS, searcher_options
from .spaces import (
    Const,
    IntRange,
    SearchSpace,
    SpaceSet,
    load_space,
    space_from_dict,
    validate_space,
)
from .spec_input import (
    apply_overrides as _apply_overrides,
)
from .spec_input import (
    check_dataset_roots,
    check_storage,
    refuse_space_as_spec,
    refuse_space_base_conflicts,
    typed_settings,
)
from .storage import SweepLocation, is_uri

__all__ = [
    "Objective",
    "SearcherSpec",
    "EarlyStopping",
    "Budget",
    "Resources",
    "SweepSpec",
    "SEARCHERS",
    "load_spec",
    "spec_from_dict",
    "parse_overrides",
    "apply_overrides",
    "build_trial_config",
    "DEMO_SPEC_YAML",
]

SEARCHERS = tuple(SAMPLERS.names())

_TOP = (
    "name",
    "description",
    "data",
    "base",
    "spaces",
    "space_selection",
    "objective",
    "searcher",
    "early_stopping",
    "budget",
    "resources",
    "concurrency",
    "seed",
    "storage",
    "max_failures",
    "data_cache",
)


@dataclass(frozen=True)
class Objective:
    """What the searcher optimises: one metric, or several (a Pareto front).

    Attributes:
        metrics: flat metric keys the trainer reports each epoch (``val/auroc_macro``).
        modes: ``max`` or ``min`` per metric.
    """

    metrics: tuple[str, ...] = ("val/auroc_macro",)
    modes: tuple[str, ...] = ("max",)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]


@dataclass(frozen=True)
class SearcherSpec:
    """An Optuna sampler by name and its constructor options (checked when it is built)."""

    name: str = "tpe"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EarlyStopping:
    """ASHA on one metric (``scheduler="asha"``) or none.

    Attributes:
        scheduler: ``asha`` or ``none``.
        metric, mode: what ASHA compares (default: the objective's, which must then be single).
        grace_period: epochs before a trial can be stopped.
        reduction_factor: ASHA's eta (keep the top 1/eta at each rung).
        max_t: epochs of a full trial (default: the largest ``train.epochs`` a trial can get).
    """

    scheduler: str = "none"
    metric: str | None = None
    mode: str | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None

    @property
    def enabled(self) -> bool:
        return self.scheduler == "asha"


@dataclass(frozen=True)
class Budget:
    """``trials`` to run (at most) and an optional wall-time budget in seconds."""

    trials: int = 8
    time_s: float | None = None


@dataclass(frozen=True)
class Resources:
    """Resources of one trial.

    Attributes:
        workers: data-parallel workers; 1 runs the trial directly in the Tune trial process,
            more run it under Ray Train (``TorchTrainer``, gloo on CPU, nccl on GPU).
        cpus_per_worker: logical CPUs per worker (fractions allowed).
        gpus_per_worker: GPUs per worker; a fraction below 1 shares a GPU between trials
            (logical only: memory isolation is the user's job).
    """

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec (see the module docstring for the YAML)."""

    name: str
    description: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    base: Mapping[str, Any] = field(default_factory=dict)
    spaces: SpaceSet = field(default_factory=lambda: SpaceSet(()))
    objective: Objective = field(default_factory=Objective)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    budget: Budget = field(default_factory=Budget)
    resources: Resources = field(default_factory=Resources)
    concurrency: int = 1
    seed: int = 0
    storage: str = "sweeps"
    max_failures: int = 2
    data_cache: str = "sweep"
    source: str = "<spec>"
    #: data-config key -> cache folder, set by ``prepare_sweep_data`` before the first trial
    #: (never written to ``sweep.yaml``); :func:`build_trial_config` points each trial's
    #: ``data.cache`` at the entry of its data config
    data_caches: Mapping[str, str] = field(default_factory=dict)

    @property
    def location(self) -> SweepLocation:
        return SweepLocation.of(self.storage, self.name)

    def context(self) -> dict[str, Any]:
        """Flat run-config values the spec applies to every trial (data, base, seed)."""
        return _context(self.data, self.base, self.seed)

    def max_epochs(self) -> int:
        """The most epochs any trial can train (ASHA's ``max_t`` default)."""
        best = 0
        ctx = self.context()
        for s in self.spaces.spaces:
            e = s.base.get("train.epochs", TrainConfig.epochs)
            e = ctx.get("train.epochs", e)
            for p in s.params:
                if p.key == "train.epochs" and "train.epochs" not in self.base:
                    if isinstance(p.dist, IntRange):
                        e = p.dist.high
                    elif isinstance(p.dist, Const):
                        e = p.dist.value
                    else:
                        e = max(p.dist.grid())
            best = max(best, int(e))
        return best

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict; spaces are inlined so the sweep folder is self-contained."""
        return {
            "name": self.name,
            "description": self.description,
            "data": plain(self.data),
            "base": plain(self.base),
            "spaces": [s.to_dict() for s in self.spaces.spaces],
            "space_selection": self.spaces.selection,
            "objective": {
                "metrics": list(self.objective.metrics),
                "modes": list(self.objective.modes),
            },
            "searcher": {"name": self.searcher.name, **plain(self.searcher.options)},
            "early_stopping": dataclasses.asdict(self.early_stopping),
            "budget": dataclasses.asdict(self.budget),
            "resources": dataclasses.asdict(self.resources),
            "concurrency": self.concurrency,
            "seed": self.seed,
            "storage": self.storage,
            "max_failures": self.max_failures,
            "data_cache": self.data_cache,
        }


def _context(data: Mapping[str, Any], base: Mapping[str, Any], seed: int) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        flat[f"data.{k}"] = dict(v) if isinstance(v, Mapping) else v
    flat["train.seed"] = seed
    flat.update(base)
    return flat


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


#: the spec of ``lesionsweep sweep`` with no argument (package data next to this module): the
#: ``demo`` space on a small synthetic phantom with a tiny backbone, sized for a 2-core CPU laptop
DEMO_SPEC_PATH = Path(__file__).with_name("demo_sweep.yaml")
DEMO_SPEC_YAML = DEMO_SPEC_PATH.read_text()


def load_spec(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Load a sweep spec (``None``: the demo spec, :data:`DEMO_SPEC_YAML`) with ``overrides``.

    Raises:
        ConfigError: naming the file and the key for anything invalid.
    """
    hint = f"keys: {', '.join(_TOP)}"
    if path is None:
        p, base_dir = "<demo spec>", None
        raw = parse_yaml_mapping(DEMO_SPEC_YAML, p, "sweep spec", hint)
    else:
        fp = Path(path)
        p, base_dir = str(fp), fp.parent
        raw = read_yaml(fp, "sweep spec", hint)
    refuse_space_as_spec(raw, p)
    if overrides:
        raw = apply_overrides(raw, overrides, p)
    raw = dict(raw)
    if path is not None:
        raw.setdefault("name", Path(path).stem)
    return spec_from_dict(raw, source=p, base_dir=base_dir)


def _check_keys(body: Any, allowed: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping with keys {', '.join(allowed)}, got {body!r}"
        )
    check_keys(body, allowed, where)
    return dict(body)


def _int(v: Any, where: str, low: int) -> int:
    """An integer >= ``low`` (the one conversion of :mod:`lesionsweep.values`)."""
    return int(convert(v, Annotated[int, Range(low, None)], where))


def _num(v: Any, where: str, low: float, strict: bool = False) -> float:
    """A finite number >= ``low`` (> ``low`` when ``strict``)."""
    out = float(convert(v, Annotated[float, Range(low, None)], where))
    if strict and out == low:
        raise ConfigError(f"{where} = {v!r} is out of range; it must be > {low:g}")
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> dict:
    """Apply ``--set`` overrides (``budget.trials``, ``base.optim.lr``) onto a parsed spec."""
    return _apply_overrides(raw, overrides, source, _TOP)


def _mode(v: Any, where: str) -> str:
    if v not in ("max", "min"):
        raise ConfigError(f"{where}: mode {v!r} is not allowed; choose max or min")
    return v


def spec_from_dict(
    raw: Mapping[str, Any], source: str = "<spec>", base_dir: Path | None = None
) -> SweepSpec:
    """Validate a parsed spec; spaces are loaded (and validated against the trial config)."""
    raw = _check_keys(raw, _TOP, source)
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{source}: name {name!r} must be a non-empty folder name")
    description = raw.get("description") or ""

    data = raw.get("data") or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: data must be a mapping like the run config's data section")
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"{source}: base must be a mapping of flat section.key values")
    base = dict(base)
    for k in base:
        if not isinstance(k, str) or "." not in k:
            raise ConfigError(f"{source}: base key {k!r} must be a flat run-config key section.key")
        if k.startswith("data.") and k[5:].split(".")[0] in data:
            raise ConfigError(f"{source}: {k!r} is set both in data and in base; keep one")

    # objective
    obj_raw = raw.get("objective") or {"metric": "val/auroc_macro", "mode": "max"}
    obj = _check_keys(obj_raw, ("metric", "mode", "metrics", "modes"), f"{source}: objective")
    if ("metric" in obj) == ("metrics" in obj):
        raise ConfigError(f"{source}: objective: give either metric/mode or metrics/modes")
    if "metric" in obj:
        metrics: tuple[str, ...] = (obj["metric"],)
        modes: tuple[str, ...] = (_mode(obj.get("mode", "max"), f"{source}: objective.mode"),)
    else:
        metrics = tuple(obj["metrics"] or ())
        modes_raw = obj.get("modes") or ["max"] * len(metrics)
        if not isinstance(modes_raw, list) or len(modes_raw) != len(metrics):
            raise ConfigError(f"{source}: objective.modes must list one mode per metric")
        modes = tuple(_mode(m, f"{source}: objective.modes") for m in modes_raw)
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise ConfigError(f"{source}: objective metric names must be non-empty strings")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"{source}: objective.metrics has duplicates: {list(metrics)}")
    objective = Objective(metrics, modes)

    # searcher
    s_raw = raw.get("searcher", "tpe")
    if isinstance(s_raw, str):
        s_raw = {"name": s_raw}
    if not isinstance(s_raw, Mapping) or "name" not in s_raw:
        raise ConfigError(f"{source}: searcher must be a name or a mapping with a name")
    s_opts = dict(s_raw)
    s_name = s_opts.pop("name")
    if s_name not in SEARCHERS:
        raise ConfigError(
            f"{source}: searcher {s_name!r} is not allowed; choose one of: {', '.join(SEARCHERS)}"
        )
    if objective.multi and s_name not in MULTI_OBJECTIVE:
        raise ConfigError(
            f"{source}: searcher {s_name!r} is single-objective; with several objective metrics "
            f"choose one of: {', '.join(MULTI_OBJECTIVE)}"
        )
    if "seed" in s_opts:
        raise ConfigError(f"{source}: searcher.seed: set the spec's top-level seed instead")
    check_keys(
        s_opts,
        searcher_options(s_name),
        source,
        what="option",
        prefix="searcher.",
        owner=f"optuna's {SAMPLERS.get(s_name).__name__}",
    )
    searcher = SearcherSpec(s_name, s_opts)

    # early stopping
    es_raw = raw.get("early_stopping", "none")
    if es_raw in (None, "none", False):
        es_raw = {"scheduler": "none"}
    elif es_raw == "asha":
        es_raw = {"scheduler": "asha"}
    es = _check_keys(
        es_raw, [f.name for f in dataclasses.fields(EarlyStopping)], f"{source}: early_stopping"
    )
    sched = es.get("scheduler", "asha")
    if sched not in ("asha", "none"):
        raise ConfigError(f"{source}: early_stopping.scheduler {sched!r}: choose asha or none")
    if sched == "asha":
        metric = es.get("metric")
        mode = es.get("mode")
        if metric is None:
            if objective.multi:
                raise ConfigError(
                    f"{source}: early_stopping.metric is required with a multi-objective sweep "
                    "(ASHA compares one metric)"
                )
            metric, mode = objective.metric, mode or objective.mode
        early = EarlyStopping(
            scheduler="asha",
            metric=str(metric),
            mode=_mode(mode or "max", f"{source}: early_stopping.mode"),
            grace_period=_int(
                es.get("grace_period", 1), f"{source}: early_stopping.grace_period", 1
            ),
            reduction_factor=_num(
                es.get("reduction_factor", 2), f"{source}: early_stopping.reduction_factor", 1, True
            ),
            max_t=None
            if es.get("max_t") is None
            else _int(es["max_t"], f"{source}: early_stopping.max_t", 1),
        )
    else:
        early = EarlyStopping()

    b = _check_keys(raw.get("budget") or {}, ("trials", "time_s"), f"{source}: budget")
    budget = Budget(
        trials=_int(b.get("trials", 8), f"{source}: budget.trials", 1),
        time_s=None
        if b.get("time_s") is None
        else _num(b["time_s"], f"{source}: budget.time_s", 0, True),
    )
    r = _check_keys(
        raw.get("resources") or {},
        ("workers", "cpus_per_worker", "gpus_per_worker"),
        f"{source}: resources",
    )
    resources = Resources(
        workers=_int(r.get("workers", 1), f"{source}: resources.workers", 1),
        cpus_per_worker=_num(
            r.get("cpus_per_worker", 1), f"{source}: resources.cpus_per_worker", 0, True
        ),
        gpus_per_worker=_num(
            r.get("gpus_per_worker", 0), f"{source}: resources.gpus_per_worker", 0
        ),
    )
    g = resources.gpus_per_worker
    if g > 1 and not g.is_integer():
        raise ConfigError(
            f"{source}: resources.gpus_per_worker {g}: fractions are allowed below 1 only "
            "(several trials share one GPU); above 1 give a whole number"
        )
    concurrency = _int(raw.get("concurrency", 1), f"{source}: concurrency", 1)
    seed = _int(raw.get("seed", 0), f"{source}: seed", 0)
    max_failures = _int(raw.get("max_failures", 2), f"{source}: max_failures", 0)
    data_cache = check_data_cache(raw.get("data_cache", "sweep"), f"{source}: data_cache")
    storage = raw.get("storage", "sweeps")
    if not isinstance(storage, str) or not storage:
        raise ConfigError(f"{source}: storage must be a folder path or a URI, got {storage!r}")
    check_storage(storage, source)
    if not is_uri(storage):
        storage = str(SweepLocation.of(storage, name).storage)

    # spaces
    sp_raw = raw.get("spaces", ["demo"])
    if isinstance(sp_raw, (str, Mapping)):
        sp_raw = [sp_raw]
    if not isinstance(sp_raw, list) or not sp_raw:
        raise ConfigError(f"{source}: spaces must list at least one space (name, path or mapping)")
    spaces: list[SearchSpace] = []
    for i, item in enumerate(sp_raw):
        if isinstance(item, Mapping):
            spaces.append(space_from_dict(item, source=f"{source}: spaces[{i}]", validate=False))
        elif isinstance(item, str):
            spaces.append(load_space(item, relative_to=base_dir, validate=False))
        else:
            raise ConfigError(f"{source}: spaces[{i}] must be a name, a path or a mapping")
    selection = raw.get("space_selection", "round_robin")
    if selection not in ("round_robin", "searched"):
        raise ConfigError(
            f"{source}: space_selection {selection!r} is not allowed; "
            "choose one of: round_robin, searched"
        )
    data, base = typed_settings(data, base, spaces, source)
    refuse_space_base_conflicts(data, spaces, source)
    context = _context(data, base, seed)
    pins = {k: v for k, v in base.items() if any(k in s.keys() for s in spaces)}
    space_set = SpaceSet(tuple(spaces), selection=selection, pins=pins)
    for s in spaces:
        validate_space(s, context=context, pins=pins)
    check_dataset_roots(context, spaces, pins, source)
    if searcher.name == "grid":
        space_set.grid()  # raises for ranges without a grid
    spec = SweepSpec(
        name=name,
        description=str(description),
        data=dict(data),
        base=base,
        spaces=space_set,
        objective=objective,
        searcher=searcher,
        early_stopping=early,
        budget=budget,
        resources=resources,
        concurrency=concurrency,
        seed=seed,
        storage=storage,
        max_failures=max_failures,
        data_cache=data_cache,
        source=source,
    )
    if early.enabled:
        max_t = early.max_t or spec.max_epochs()
        if early.grace_period > max_t:
            raise ConfigError(
                f"{source}: early_stopping.grace_period {early.grace_period} exceeds the trial "
                f"length max_t = {max_t} epochs"
            )
    return spec


def build_trial_config(spec: SweepSpec, space_name: str, params: Mapping[str, Any]) -> RunConfig:
    """The run config of one trial: space base < spec data < spec base < drawn params.

    ``data.cache`` is the sweep's prepared cache of the trial's data config (from
    ``spec.data_caches``) unless the spec or the space names one.
    """
    space = spec.spaces.by_name(space_name)
    flat = {**space.base, **spec.context(), **params}
    cfg = config_from_flat(flat, source=f"{spec.source}: space {space_name!r}")
    if spec.data_caches and cfg.data.cache is None:
        path = spec.data_caches.get(data_key(cfg.data))
        if path is not None:
            cfg = cfg.replace(data=dataclasses.replace(cfg.data, cache=path))
    return cfg
