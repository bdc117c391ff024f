"""Typed, frozen run configs and their strict YAML loading.

A run config is nested YAML with the sections ``method``, ``loss``, ``data``, ``optim``,
``train`` and ``eval``. ``method`` and ``loss`` carry a ``name`` plus that component's own
keyword arguments, validated against the component's constructor; the other sections map onto
the dataclasses below field by field. Any unknown key is a :class:`ConfigError` naming the file,
the key and the allowed keys. A sweep's flat sampled dict (``{"method.pooling": "lse",
"optim.lr": 1e-3}``) becomes a config through :func:`config_from_flat`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SECTIONS = ("method", "loss", "data", "optim", "train", "eval")


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

    dataset: str = "phantom"
    root: str | None = None
    cache: str | None = None
    image_size: int = 128
    classes: tuple[str, ...] | None = None
    num_workers: int = 0
    skip_bad_images: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr, weight_decay, momentum, nesterov: optimiser settings (momentum/nesterov for SGD).
        schedule: ``none``, ``step``, ``cosine`` or ``plateau``.
        step_size, gamma: StepLR (epochs, factor).
        patience, factor: ReduceLROnPlateau on the validation loss.
        warmup_epochs: linear warm-up epochs (cosine/step).
    """

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "none"
    step_size: int = 10
    gamma: float = 0.1
    patience: int = 1
    factor: float = 0.2
    warmup_epochs: int = 0


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

    epochs: int = 3
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = False
    in_chans: int = 1
    log_images: int = 4
    grad_clip: float = 0.0
    max_steps_per_epoch: int = 0
    keep_checkpoint: str = "best"
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
    batch_size: int = 32
    select_metric: str = "val/auroc_macro"
    select_mode: str = "max"
    cam_curve_interval: float = 0.01
    loc_every: int = 1


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
                out[sec] = {"name": obj.name, **dict(obj.kwargs)}
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

ALLOWED = {
    "data": {"dataset": ("phantom", "nih", "siim", "rsna", "chexpert")},
    "optim": {"name": ("adam", "adamw", "sgd"), "schedule": ("none", "step", "cosine", "plateau")},
    "train": {"keep_checkpoint": ("best", "last", "none")},
}


def section_fields(section: str) -> dict[str, dataclasses.Field[Any]]:
    """Fields of a dataclass-backed section (``data``, ``optim``, ``train``, ``eval``)."""
    return {f.name: f for f in fields(_DATACLASS_FOR[section])}


def _coerce(value: Any, f: dataclasses.Field[Any], where: str) -> Any:
    """Check/convert a YAML value against a dataclass field's annotation."""
    ann = str(f.type)
    if value is None:
        if "None" in ann:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {ann})")
    if ann.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of names, got {value!r}")
        return tuple(value)
    if ann.startswith("Mapping"):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if ann.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if ann.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if ann.startswith("float"):
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if ann.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(raw: Mapping[str, Any], source: str = "<config>") -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts; unknown keys raise :class:`ConfigError`.

    Method and loss kwargs are checked against the registered constructors.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of sections {SECTIONS}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(SECTIONS)}"
        )
    built: dict[str, Any] = {}
    for sec in ("method", "loss"):
        body = raw.get(sec) or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping, got {body!r}")
        body = dict(body)
        name = body.pop("name", "cam" if sec == "method" else "bce")
        _check_component(sec, name, body, source)
        built[sec] = (MethodConfig if sec == "method" else LossConfig)(name=name, kwargs=body)
    for sec, cls in _DATACLASS_FOR.items():
        body = raw.get(sec) or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping, got {body!r}")
        flds = section_fields(sec)
        bad = sorted(set(body) - set(flds))
        if bad:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(f'{sec}.{k}' for k in bad)}; "
                f"allowed in {sec!r}: {', '.join(sorted(flds))}"
            )
        kwargs = {k: _coerce(v, flds[k], f"{source}: {sec}.{k}") for k, v in body.items()}
        for k, choices in ALLOWED.get(sec, {}).items():
            if k in kwargs and kwargs[k] not in choices:
                raise ConfigError(
                    f"{source}: {sec}.{k} = {kwargs[k]!r} is not allowed; "
                    f"choose one of: {', '.join(choices)}"
                )
        built[sec] = cls(**kwargs)
    cfg = RunConfig(**built)
    if cfg.eval.split == "test" or cfg.eval.split.startswith("test"):
        raise ConfigError(
            f"{source}: eval.split = {cfg.eval.split!r}: the test split is reachable only through "
            "`lesionsweep evaluate --split test`, never during training or a sweep"
        )
    _check_loc_split(cfg.eval, source)
    for k in ("epochs", "batch_size"):
        if getattr(cfg.train, k) < 1:
            raise ConfigError(f"{source}: train.{k} must be >= 1, got {getattr(cfg.train, k)}")
    if cfg.eval.loc_every < 1:
        raise ConfigError(f"{source}: eval.loc_every must be >= 1, got {cfg.eval.loc_every}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{source}: optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.train.in_chans not in (1, 3):
        raise ConfigError(f"{source}: train.in_chans must be 1 or 3, got {cfg.train.in_chans}")
    return cfg


#: values of ``eval.loc_split`` besides None. ``val`` and ``train`` are not among them: the
#: ``eval.split`` metrics are already reported as ``val/<key>`` and the train loss as
#: ``train/loss``, so their keys would collide.
LOC_SPLIT_CHOICES = ("auto", "none", "val-loc")


def _check_loc_split(ev: EvalConfig, source: str) -> None:
    """Refuse a test split, an unknown name or ``eval.split`` itself as ``eval.loc_split``."""
    loc = ev.loc_split
    if loc is None:
        return
    if loc.lower().startswith("test"):
        raise ConfigError(
            f"{source}: eval.loc_split = {loc!r}: the test split is reachable only through "
            "`lesionsweep evaluate --split test-loc`, never during training or a sweep"
        )
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


def _check_component(section: str, name: Any, kwargs: Mapping[str, Any], source: str) -> None:
    if section == "method":
        from lesionsweep.methods import method_names, method_params

        names = method_names()
        if name not in names:
            raise ConfigError(
                f"{source}: method.name = {name!r} is not a registered method; "
                f"choose one of: {', '.join(names)}"
            )
        allowed = set(method_params(name))
    else:
        from lesionsweep.methods.losses import loss_names, loss_params

        names = loss_names()
        if name not in names:
            raise ConfigError(
                f"{source}: loss.name = {name!r} is not a registered loss; "
                f"choose one of: {', '.join(names)}"
            )
        allowed = set(loss_params(name))
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in bad)} for "
            f"{section} {name!r}; allowed: {', '.join(sorted(allowed | {'name'}))}"
        )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Load a YAML run config; ``overrides`` are flat ``section.key`` values applied on top."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: malformed YAML: {e}") from None
    if overrides:
        raw = merge_flat(raw, overrides, str(p))
    return config_from_dict(raw, source=str(p))


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``dotted.key=value`` strings (``--set``) to a dict; values parse as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
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
    from .io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
