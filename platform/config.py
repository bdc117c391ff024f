"""Typed, frozen run configs and their strict YAML loading.

A run config is nested YAML with the sections ``method``, ``loss``, ``data``, ``optim``,
``train`` and ``eval``. ``method`` and ``loss`` carry a ``name`` plus that component's own
keyword arguments, validated against the component's constructor; the other sections map onto
the dataclasses below field by field. Any unknown key is a :class:`ConfigError` naming the file,
the key and the allowed keys.

Every value is converted once, here, to its declared type by :func:`lesionsweep.values.convert`:
the dataclass field annotations below (``Literal`` for enumerations, ``Annotated[..., Range]``
for bounds) and, for ``method``/``loss``, the registered constructor's annotations
(:meth:`Registry.hints`). Bounds on absurd values: ``train.epochs`` 1..10,000,
``train.batch_size`` and ``eval.batch_size`` 1..65,536, ``data.image_size`` 16..4,096 px,
``data.num_workers`` 0..256, ``train.log_images`` 0..1,024, ``optim.lr`` > 0 (no upper bound),
``optim.momentum``/``gamma``/``factor`` in [0, 1]. A config that names a method must give an
image size that is a multiple of the method's ``input_multiple`` (PYLON: 256). An empty file,
a binary file or a top level that is not a mapping is refused.

A sweep's flat sampled dict (``{"method.pooling": "lse", "optim.lr": 1e-3}``) becomes a config
through :func:`config_from_flat`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from lesionsweep.methods import LOSSES, METHODS

from .errors import ConfigError, check_keys, refuse_test_split
from .fileio import atomic_write_text
from .values import Range, convert, parse_yaml_value, plain, read_yaml

SECTIONS = ("method", "loss", "data", "optim", "train", "eval")

#: the datasets a run can read (the data layer maps each name to its loader)
DatasetName = Literal["phantom", "nih", "siim", "rsna", "chexpert"]

# Bounds on what a run config accepts (values outside are refused as absurd, not clipped).
#: epochs of one run: at most 10,000 (a typo such as 1000000000 would otherwise run forever)
MAX_EPOCHS = 10_000
#: images per batch (training and evaluation)
MAX_BATCH = 65_536
#: side of the square model input, in pixels
IMAGE_SIZE_RANGE = Range(16, 4096, "pixels per side")


@dataclass(frozen=True)
class MethodConfig:
    """``name`` of a registered method and its constructor kwargs (validated on build)."""

    name: str = "cam"
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """``name`` of a registered classification loss and its kwargs."""

    name: str = "bce"
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where, at what size, and dataset-specific options.

    Attributes:
        dataset: ``phantom`` (synthetic, no files), ``nih``, ``siim``, ``rsna``, ``chexpert``.
        root: folder with the dataset's official files (not used by ``phantom``).
        cache: folder of a preprocessed cache built by ``lesionsweep cache``; read instead of
            decoding the original images when given.
        image_size: side of the square images delivered to the model.
        classes: optional subset of the dataset's classes (names), in this order.
        num_workers: DataLoader worker processes.
        skip_bad_images: skip and record unreadable images instead of failing.
        options: dataset-specific options (e.g. phantom ``num_train``, ``difficulty``,
            ``confounder_class``; NIH ``val_loc_per_class``; CheXpert ``uncertainty``).
    """

    dataset: DatasetName = "phantom"
    root: str | None = None
    cache: str | None = None
    image_size: Annotated[int, IMAGE_SIZE_RANGE] = 128
    classes: tuple[str, ...] | None = None
    num_workers: Annotated[int, Range(0, 256)] = 0
    skip_bad_images: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr, weight_decay, momentum, nesterov: optimiser settings (momentum/nesterov for SGD).
            ``lr`` must be > 0 and has no upper bound: a diverging rate is a legitimate result
            of a search and fails its trial at the first non-finite loss.
        schedule: ``none``, ``step``, ``cosine`` or ``plateau``.
        step_size, gamma: StepLR (epochs, factor).
        patience, factor: ReduceLROnPlateau on the validation loss.
        warmup_epochs: linear warm-up epochs (cosine/step).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Range(0, None)] = 1e-3
    weight_decay: Annotated[float, Range(0, 10)] = 0.0
    momentum: Annotated[float, Range(0, 1)] = 0.9
    nesterov: bool = False
    schedule: Literal["none", "step", "cosine", "plateau"] = "none"
    step_size: Annotated[int, Range(1, MAX_EPOCHS)] = 10
    gamma: Annotated[float, Range(0, 1)] = 0.1
    patience: Annotated[int, Range(0, MAX_EPOCHS)] = 1
    factor: Annotated[float, Range(0, 1)] = 0.2
    warmup_epochs: Annotated[int, Range(0, MAX_EPOCHS)] = 0


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings.

    Attributes:
        epochs, batch_size, seed: as named.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision on CUDA (ignored on CPU).
        channels_last: memory format for conv backbones.
        in_chans: channels fed to the backbone (1 or 3; grayscale is replicated for 3).
        log_images: number of fixed validation images whose map overlays go to TensorBoard.
        grad_clip: max gradient norm (0 = off).
        max_steps_per_epoch: cap on optimizer steps per epoch (0 = whole split).
        keep_checkpoint: what ``checkpoints/`` keeps once the last epoch is done: ``best``
            (default; weights-only ``best.pt`` of the ``eval.select_metric`` epoch), ``last``
            (weights-only ``last.pt`` of the final epoch) or ``none``. While the run is going,
            ``last.pt`` is the resumable checkpoint (weights, optimizer, schedule, RNG) and
            ``best.pt`` is written weights-only when the policy is ``best``.
        keep_resumable: keep the resumable ``last.pt`` (with the optimizer state) after the
            run ends too, e.g. to train further epochs later.
    """

    epochs: Annotated[int, Range(1, MAX_EPOCHS)] = 3
    batch_size: Annotated[int, Range(1, MAX_BATCH)] = 16
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = False
    in_chans: Literal[1, 3] = 1
    log_images: Annotated[int, Range(0, 1024)] = 4
    grad_clip: Annotated[float, Range(0, None)] = 0.0
    max_steps_per_epoch: Annotated[int, Range(0, None)] = 0
    keep_checkpoint: Literal["best", "last", "none"] = "best"
    keep_resumable: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings.

    Attributes:
        split: split evaluated every epoch during training (never ``test``: only
            ``lesionsweep evaluate`` may touch it); its metrics are reported as ``val/<key>``.
        loc_split: a localization split evaluated every epoch next to ``split``, its metrics
            reported as ``<loc_split>/<key>`` (e.g. ``val-loc/point_acc_micro``).
            ``"auto"`` (default): when the ``split`` items carry no boxes or masks (its
            ``DatasetInfo`` has ``has_boxes=False`` and ``has_masks=False``, as the image-label
            ``val`` of NIH / RSNA / SIIM) and the dataset has a non-empty ``val-loc`` split with
            boxes or masks, also evaluate ``val-loc``; otherwise nothing is added (the
            phantom's ``val`` already has boxes and masks). ``None`` or ``"none"``: off.
            ``"val-loc"``: always evaluate ``val-loc`` (unless ``split`` is ``val-loc``
            itself, which is refused). Never a test split.
        batch_size: evaluation batch size.
        select_metric, select_mode: what decides the "best" checkpoint; ``select_metric``
            may name a ``val/`` or a ``<loc_split>/`` key.
        cam_curve_interval: threshold step of MaxBoxAccV2/PxAP.
        loc_every: compute the localization metrics (every suite key but the AUROC ones, on
            ``split`` and ``loc_split``) every ``loc_every`` epochs and always on the last
            epoch; the losses and AUROC every epoch. On the other epochs those keys are NaN, so
            such an epoch is never the best one for a localization ``select_metric`` (early
            stopping on one: see :mod:`lesionsweep.training.trainer`).
    """

    split: str = "val"
    loc_split: str | None = "auto"
    batch_size: Annotated[int, Range(1, MAX_BATCH)] = 32
    select_metric: str = "val/auroc_macro"
    select_mode: Literal["max", "min"] = "max"
    cam_curve_interval: Annotated[float, Range(1e-4, 0.5)] = 0.01
    loc_every: Annotated[int, Range(1, None)] = 1


@dataclass(frozen=True)
class RunConfig:
    """A complete single-run config."""

    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict in the YAML layout (``method``/``loss`` kwargs inlined)."""
        out: dict[str, Any] = {}
        for sec in SECTIONS:
            obj = getattr(self, sec)
            if sec in ("method", "loss"):
                out[sec] = {"name": obj.name, **plain(dict(obj.kwargs))}
            else:
                d = dataclasses.asdict(obj)
                if sec == "data":
                    d["options"] = dict(obj.options)
                    if d["classes"] is not None:
                        d["classes"] = list(d["classes"])
                out[sec] = d
        return out

    def to_flat(self) -> dict[str, Any]:
        """Flat ``section.key`` dict (nested option dicts stay values)."""
        flat: dict[str, Any] = {}
        for sec, d in self.to_dict().items():
            for k, v in d.items():
                flat[f"{sec}.{k}"] = v
        return flat

    def replace(self, **sections: Any) -> RunConfig:
        return dataclasses.replace(self, **sections)


_DATACLASS_FOR = {
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def section_fields(section: str) -> dict[str, dataclasses.Field[Any]]:
    """Fields of a dataclass-backed section (``data``, ``optim``, ``train``, ``eval``)."""
    return {f.name: f for f in fields(_DATACLASS_FOR[section])}


def section_hints(section: str) -> dict[str, Any]:
    """Resolved field annotations of a dataclass-backed section (what :func:`convert` takes)."""
    return typing.get_type_hints(_DATACLASS_FOR[section], include_extras=True)


def component_hints(section: str, name: Any, source: str) -> dict[str, Any]:
    """Constructor annotations of the ``method`` or ``loss`` called ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names).
    """
    registry = METHODS if section == "method" else LOSSES
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(
            f"{source}: {section}.name = {name!r} is not a registered {section}; "
            f"choose one of: {', '.join(registry.names())}"
        )
    return registry.hints(name)


def convert_key(
    section: str, key: str, value: Any, source: str, component: Any = None, role: str = ""
) -> Any:
    """Convert one value of ``section.key`` to its declared type (the one conversion).

    Args:
        section: a run-config section.
        key: the key within it (``options.<opt>`` of ``data`` passes through unchanged).
        value: the YAML value.
        source: the file, for messages.
        component: the method / loss name for ``method.*`` / ``loss.*`` keys.
        role: shown before the key ("parameter", "base").

    Raises:
        ConfigError: unknown key, or a value that does not fit its type (naming file, key,
            value and the expected type).
    """
    where = f"{source}: {role + ' ' if role else ''}{section}.{key}"
    if section in ("method", "loss"):
        if key == "name":
            component_hints(section, value, source)
            return value
        hints = component_hints(section, component, source)
        check_keys(
            [key], ["name", *hints], source, prefix=f"{section}.", owner=f"{section} {component!r}"
        )
        return convert(value, hints[key], where, owner=f"{section} {component!r}")
    if section == "data" and key.startswith("options."):
        return value
    hints = section_hints(section)
    check_keys([key], hints, source, prefix=f"{section}.")
    return convert(value, hints[key], where)


def config_from_dict(raw: Mapping[str, Any], source: str = "<config>") -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts: every key checked, every value converted.

    Method and loss kwargs are checked against the registered constructors and converted from
    their annotations here, once; the constructors trust them.

    Raises:
        ConfigError: naming ``source``, the key, the value and what is allowed.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of sections {SECTIONS}")
    check_keys(raw, SECTIONS, source, what="section")
    built: dict[str, Any] = {}
    for sec in ("method", "loss"):
        body = raw.get(sec) or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping, got {body!r}")
        body = dict(body)
        name = body.pop("name", "cam" if sec == "method" else "bce")
        hints = component_hints(sec, name, source)
        owner = f"{sec} {name!r}"
        check_keys(body, ["name", *hints], source, prefix=f"{sec}.", owner=owner)
        kwargs = {
            k: convert(v, hints[k], f"{source}: {sec}.{k}", owner=owner) for k, v in body.items()
        }
        built[sec] = (MethodConfig if sec == "method" else LossConfig)(name=name, kwargs=kwargs)
    for sec, cls in _DATACLASS_FOR.items():
        body = raw.get(sec) or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping, got {body!r}")
        hints = section_hints(sec)
        check_keys(body, hints, source, prefix=f"{sec}.")
        kwargs = {k: convert(v, hints[k], f"{source}: {sec}.{k}") for k, v in body.items()}
        built[sec] = cls(**kwargs)
    cfg = RunConfig(**built)
    refuse_test_split(cfg.eval.split, f"{source}: eval.split")
    _check_loc_split(cfg.eval, source)
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{source}: optim.lr must be > 0, got {cfg.optim.lr}")
    if "method" in raw:  # a data-only dict (``lesionsweep cache``) trains nothing
        _check_input_multiple(cfg, source)
    return cfg


def _check_input_multiple(cfg: RunConfig, source: str) -> None:
    """The image side must be a multiple of the method's ``input_multiple`` (PYLON: 256)."""
    mult = int(getattr(METHODS.get(cfg.method.name), "input_multiple", 1) or 1)
    if cfg.data.image_size % mult:
        raise ConfigError(
            f"{source}: data.image_size = {cfg.data.image_size} is not allowed for method "
            f"{cfg.method.name!r}: it needs a multiple of {mult} (e.g. "
            f"{max(mult, cfg.data.image_size // mult * mult)})"
        )


#: values of ``eval.loc_split`` besides None. ``val`` and ``train`` are not among them: the
#: ``eval.split`` metrics are already reported as ``val/<key>`` and the train loss as
#: ``train/loss``, so their keys would collide.
LOC_SPLIT_CHOICES = ("auto", "none", "val-loc")


def _check_loc_split(ev: EvalConfig, source: str) -> None:
    """Refuse a test split, an unknown name or ``eval.split`` itself as ``eval.loc_split``."""
    loc = ev.loc_split
    if loc is None:
        return
    refuse_test_split(loc, f"{source}: eval.loc_split")
    if loc not in LOC_SPLIT_CHOICES:
        raise ConfigError(
            f"{source}: eval.loc_split = {loc!r} is not allowed; choose null or one of: "
            f"{', '.join(LOC_SPLIT_CHOICES)}"
        )
    if loc == ev.split:
        raise ConfigError(
            f"{source}: eval.loc_split = {loc!r} is eval.split itself; name another split, "
            "'auto' or 'none'"
        )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Load a YAML run config; ``overrides`` are flat ``section.key`` values applied on top."""
    p = Path(path)
    raw = read_yaml(p, "run config", hint=f"sections: {', '.join(SECTIONS)}")
    if overrides:
        raw = merge_flat(raw, overrides, str(p))
    return config_from_dict(raw, source=str(p))


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set PATH=VALUE`` strings to a dict (every command's one ``--set`` convention).

    ``PATH`` is a dotted path into the YAML file the command reads (a run config:
    ``optim.lr=1e-3``, ``data.options.num_train=32``; a sweep spec: ``budget.trials=4``,
    ``base.optim.lr=1e-3``); ``VALUE`` is parsed as YAML (``1e-3`` is a float, ``[a, b]`` a
    list).
    """
    out: dict[str, Any] = {}
    for item in items or ():
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ConfigError(
                f"--set {item!r}: expected PATH=VALUE with a dotted PATH into the YAML file "
                "(e.g. optim.lr=1e-3)"
            )
        out[k.strip()] = parse_yaml_value(v, f"--set {item!r}")
    return out


def merge_flat(raw: Mapping[str, Any], flat: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Apply flat ``section.key`` values onto a nested dict (a copy)."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for key, value in flat.items():
        if "." not in key:
            raise ConfigError(f"{source}: key {key!r} must look like 'section.name'")
        sec, name = key.split(".", 1)
        if sec not in SECTIONS:
            raise ConfigError(
                f"{source}: key {key!r}: unknown section {sec!r}; allowed: {', '.join(SECTIONS)}"
            )
        body = out.setdefault(sec, {})
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping")
        if "." in name and sec == "data":  # data.options.x
            head, tail = name.split(".", 1)
            if head != "options":
                raise ConfigError(f"{source}: key {key!r} is not a data field")
            body.setdefault("options", {})
            body["options"] = {**body["options"], tail: value}
        else:
            body[name] = value
    return out


def config_from_flat(
    flat: Mapping[str, Any], base: RunConfig | None = None, source: str = "<trial>"
) -> RunConfig:
    """Build a config from flat ``section.key`` values applied over ``base`` (or defaults)."""
    base_dict = (base or RunConfig()).to_dict()
    if base is None:
        base_dict = {"method": {"name": "cam"}, "loss": {"name": "bce"}}
    return config_from_dict(merge_flat(base_dict, flat, source), source=source)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write a config as YAML (atomically) that :func:`load_config` reads back identically."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
