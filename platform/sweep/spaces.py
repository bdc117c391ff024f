"""Search spaces: declarative YAML compiled into an Optuna define-by-run function.

A space file (``search_spaces/<name>.yaml`` or a user's own) has the keys ``name``,
``description``, ``base`` and ``parameters`` (see ``/work/notes/COMMON.md`` for the format).
Every parameter key is a flat run-config key (``method.pooling``, ``loss.gamma``, ``optim.lr``,
``train.batch_size``, ``data.image_size``, ``data.options.<opt>``) and carries exactly one
distribution:

* ``{choice: [a, b, ...]}``: a categorical over scalars (str, int, float, bool);
* ``{float: [low, high]}`` with optional ``log: true`` and ``step: s``;
* ``{int: [low, high]}`` with optional ``log: true`` and ``step: s`` (default 1);
* ``{const: value}``: a fixed value that is recorded as a parameter of the trial;

and optionally ``when: {earlier.param: value}`` or ``{earlier.param: [v1, v2]}`` (several
entries must all hold): the parameter is drawn only when that earlier parameter was drawn and took
one of those values.

Loading validates everything before any trial starts: the YAML shape, each distribution (empty
ranges, log ranges with ``low <= 0``, bad steps), each key against the method and loss
constructors (:func:`lesionsweep.methods.method_params`, :func:`~lesionsweep.methods.loss_params`)
and the run-config dataclasses, each value's type against the constructor's annotation or the
dataclass field, each condition (it must name an earlier parameter and a value that parameter can
take) and finally whole trial configs built from representative draws. Errors are
:class:`~lesionsweep.errors.ConfigError` naming the file, the key and what is allowed.

Nothing here imports Optuna: :meth:`SearchSpace.sample` calls ``suggest_*`` on whatever
trial-like object it is given (an ``optuna.trial.Trial`` in a sweep, a
:class:`RandomSuggester` in tests and validation).
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..config import SECTIONS, config_from_flat, section_fields
from ..errors import ConfigError

__all__ = [
    "Choice",
    "FloatRange",
    "IntRange",
    "Const",
    "Distribution",
    "Param",
    "SearchSpace",
    "SpaceSet",
    "Suggester",
    "RandomSuggester",
    "load_space",
    "space_from_dict",
    "validate_key",
    "column_type",
]

Scalar = str | int | float | bool

_TOP_KEYS = ("name", "description", "base", "parameters")
_DIST_KEYS = ("choice", "float", "int", "const")
_PARAM_KEYS = (*_DIST_KEYS, "log", "step", "when")


class Suggester(Protocol):
    """The subset of ``optuna.trial.Trial`` a space needs."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...


# ---------------------------------------------------------------------------------------------
# Distributions: validated value objects
# ---------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_number(v: Any, where: str) -> float | int:
    """A YAML number (PyYAML reads ``1e-3`` as a string: accept numeric strings)."""
    if isinstance(v, str):
        try:
            return int(v) if re.fullmatch(r"[+-]?\d+", v.strip()) else float(v)
        except ValueError:
            pass
    if not _is_number(v) or not math.isfinite(float(v)):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    return v


@dataclass(frozen=True)
class Choice:
    """A categorical over scalar ``values`` (str, int, float, bool), drawn with equal prior."""

    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("choice: the list of values is empty")
        for v in self.values:
            if not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"choice: value {v!r} is not a str, int, float or bool")
        if len({(type(v), v) for v in self.values}) != len(self.values):
            raise ValueError(f"choice: duplicate values in {list(self.values)}")

    def suggest(self, trial: Suggester, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values) or (
            _is_number(value) and any(_is_number(v) and v == value for v in self.values)
        )

    def representatives(self) -> tuple[Any, ...]:
        return self.values

    def grid(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return f"choice {list(self.values)}"


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]``; ``log`` samples log-uniformly, ``step`` discretises."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"float: bounds must be finite, got [{self.low}, {self.high}]")
        if not self.low < self.high:
            raise ValueError(
                f"float: empty range [{self.low}, {self.high}] (low must be < high; "
                "use {const: v} for a fixed value)"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"float: a log range needs low > 0, got {self.low}")
        if self.step is not None:
            if self.log:
                raise ValueError("float: step and log cannot be combined")
            if not self.step > 0 or self.step > self.high - self.low:
                raise ValueError(
                    f"float: step {self.step} must be > 0 and <= high - low "
                    f"({self.high - self.low})"
                )

    def suggest(self, trial: Suggester, name: str) -> float:
        return float(trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log))

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high

    def representatives(self) -> tuple[float, ...]:
        return (self.low, self.high)

    def grid(self) -> list[float]:
        if self.step is None:
            raise ValueError("a float range without step has no grid")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def describe(self) -> str:
        extra = ", log" if self.log else (f", step {self.step}" if self.step else "")
        return f"float [{self.low}, {self.high}{extra}]"


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]`` (inclusive); ``log`` samples log-uniformly."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(
                f"int: empty range [{self.low}, {self.high}] (low must be < high; "
                "use {const: v} for a fixed value)"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"int: a log range needs low > 0, got {self.low}")
        if self.step < 1 or self.step > self.high - self.low:
            raise ValueError(
                f"int: step {self.step} must be >= 1 and <= high - low ({self.high - self.low})"
            )
        if self.log and self.step != 1:
            raise ValueError("int: step and log cannot be combined")

    def suggest(self, trial: Suggester, name: str) -> int:
        return int(trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log))

    def contains(self, value: Any) -> bool:
        return (
            _is_number(value)
            and float(value).is_integer()
            and self.low <= value <= self.high
            and (int(value) - self.low) % self.step == 0
        )

    def representatives(self) -> tuple[int, ...]:
        return (self.low, self.low + ((self.high - self.low) // self.step) * self.step)

    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def describe(self) -> str:
        extra = ", log" if self.log else (f", step {self.step}" if self.step != 1 else "")
        return f"int [{self.low}, {self.high}{extra}]"


@dataclass(frozen=True)
class Const:
    """A fixed value recorded as a parameter (any YAML value, e.g. a list of stage indices)."""

    value: Any

    def suggest(self, trial: Suggester, name: str) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return value == self.value

    def representatives(self) -> tuple[Any, ...]:
        return (self.value,)

    def grid(self) -> list[Any]:
        return [self.value]

    def describe(self) -> str:
        return f"const {self.value!r}"


Distribution = Choice | FloatRange | IntRange | Const


def column_type(dist: Distribution) -> str:
    """Arrow-friendly column type of a distribution's values: bool, int64, float64 or string.

    ``string`` columns hold ``str`` values as they are and anything else as JSON.
    """
    if isinstance(dist, FloatRange):
        return "float64"
    if isinstance(dist, IntRange):
        return "int64"
    values = dist.values if isinstance(dist, Choice) else (dist.value,)
    return _values_type(values)


def _values_type(values: Sequence[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int64"
    if all(_is_number(v) for v in values):
        return "float64"
    return "string"


def promote_types(a: str, b: str) -> str:
    """The column type that holds values of both types."""
    if a == b:
        return a
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "string"


# ---------------------------------------------------------------------------------------------
# Parameters and spaces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched key: its distribution and the conditions under which it is drawn.

    Attributes:
        key: flat run-config key (``method.pooling``).
        dist: the distribution.
        when: ``((earlier_key, (allowed values...)), ...)``; all must hold.
    """

    key: str
    dist: Distribution
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, drawn: Mapping[str, Any]) -> bool:
        """Whether the conditions hold for the values ``drawn`` so far."""
        for ref, allowed in self.when:
            if ref not in drawn:
                return False
            v = drawn[ref]
            if not any(
                type(v) is type(a) and v == a or (_is_number(v) and v == a) for a in allowed
            ):
                return False
        return True


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space.

    Attributes:
        name: the space's name (unique within a sweep).
        description: one line for humans.
        base: flat run-config values fixed for every trial drawn from this space.
        params: the parameters in draw order.
        source: the file it came from (for messages).
    """

    name: str
    description: str = ""
    base: Mapping[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    source: str = "<space>"

    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def sample(
        self, trial: Suggester, prefix: str = "", pins: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Draw one configuration: flat ``{key: value}`` of the parameters that are active.

        Args:
            trial: an Optuna trial (or anything with its ``suggest_*`` methods).
            prefix: prepended to each key to form the Optuna parameter name (sweeps over several
                spaces namespace each space's parameters this way).
            pins: keys fixed by the sweep spec: such a parameter takes the pinned value instead
                of being drawn (conditions still see it).
        """
        pins = pins or {}
        drawn: dict[str, Any] = {}
        for p in self.params:
            if not p.active(drawn):
                continue
            if p.key in pins:
                drawn[p.key] = pins[p.key]
            else:
                drawn[p.key] = p.dist.suggest(trial, prefix + p.key)
        return drawn

    def column_types(self) -> dict[str, str]:
        return {p.key: column_type(p.dist) for p in self.params}

    def grid(self, prefix: str = "") -> dict[str, list[Any]]:
        """Optuna ``GridSampler`` search space (Optuna name → values) for the drawn parameters.

        Raises:
            ConfigError: a float range without ``step`` (it has no finite grid).
        """
        out: dict[str, list[Any]] = {}
        for p in self.params:
            if isinstance(p.dist, Const):
                continue
            try:
                out[prefix + p.key] = p.dist.grid()
            except ValueError:
                raise ConfigError(
                    f"{self.source}: parameter {p.key!r}: {p.dist.describe()} has no grid; "
                    "the grid searcher needs choices, int ranges or float ranges with a step"
                ) from None
        return out

    def representative_draws(self) -> Iterator[dict[str, Any]]:
        """A few complete draws covering every choice value and every range end.

        The first draw takes each parameter's first representative; then, for every parameter
        and every representative value, one draw with that value, with the parameter's
        conditions forced true (conditions re-evaluated for the others).
        """
        by_key = {p.key: p for p in self.params}

        def requirements(p: Param, depth: int = 0) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for ref, allowed in p.when:
                if depth < len(self.params):
                    out.update(requirements(by_key[ref], depth + 1))
                out[ref] = allowed[0]
            return out

        def draw(fixed: Mapping[str, Any]) -> dict[str, Any]:
            d: dict[str, Any] = {}
            for p in self.params:
                if p.active(d):
                    d[p.key] = fixed[p.key] if p.key in fixed else p.dist.representatives()[0]
            return d

        seen: list[dict[str, Any]] = []
        candidates = [draw({})]
        for p in self.params:
            for v in p.dist.representatives():
                candidates.append(draw({**requirements(p), p.key: v}))
        for c in candidates:
            if c not in seen:
                seen.append(c)
                yield c


class RandomSuggester:
    """A trial-like object that draws uniformly (log-uniformly for log ranges) with ``random``.

    Used to validate spaces and in tests; sweeps use Optuna's samplers.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if log:
            v = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        elif step:
            v = low + step * self.rng.randint(0, int(math.floor((high - low) / step + 1e-9)))
        else:
            v = self.rng.uniform(low, high)
        self.params[name] = min(max(v, low), high)
        return self.params[name]

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        if log:
            v = int(round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))
        else:
            v = low + step * self.rng.randint(0, (high - low) // step)
        self.params[name] = min(max(v, low), high)
        return self.params[name]


# ---------------------------------------------------------------------------------------------
# Several spaces in one sweep
# ---------------------------------------------------------------------------------------------

SPACE_PARAM = "space"
SEPARATOR = ":"


@dataclass(frozen=True)
class SpaceSet:
    """The spaces of one sweep and how trials are spread across them.

    With one space, Optuna parameter names are the plain keys. With several, a trial first picks
    a space and the space's keys are namespaced ``<space>:<key>`` (so ``optim.lr`` of ``cam`` and
    ``optim.lr`` of ``pylon`` are learned separately):

    * ``selection="round_robin"`` (default): trial number ``n`` uses space ``n mod len(spaces)``,
      so every space gets the same share of the budget (what a method comparison needs);
    * ``selection="searched"``: a top-level categorical parameter ``space`` that the sampler
      learns, so the budget drifts to the most promising space.

    Attributes:
        spaces: the spaces (unique names).
        selection: ``round_robin`` or ``searched``.
        pins: keys fixed by the sweep spec's ``base`` (they override a space parameter).
    """

    spaces: tuple[SearchSpace, ...]
    selection: str = "round_robin"
    pins: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.spaces:
            raise ConfigError("a sweep needs at least one search space")
        names = [s.name for s in self.spaces]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(
                f"search space name(s) {dup} used more than once "
                f"({', '.join(s.source for s in self.spaces if s.name in dup)}); "
                "names must be unique within a sweep"
            )
        if self.selection not in ("round_robin", "searched"):
            raise ConfigError(
                f"space selection {self.selection!r} is not allowed; "
                "choose one of: round_robin, searched"
            )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.spaces]

    def by_name(self, name: str) -> SearchSpace:
        for s in self.spaces:
            if s.name == name:
                return s
        raise KeyError(f"no search space named {name!r}; spaces: {', '.join(self.names)}")

    def prefix(self, name: str) -> str:
        return "" if len(self.spaces) == 1 else f"{name}{SEPARATOR}"

    def pick(self, trial: Any, number: int | None = None) -> SearchSpace:
        """The space for a trial (``number``: the Optuna trial number for round robin)."""
        if len(self.spaces) == 1:
            return self.spaces[0]
        if self.selection == "searched":
            return self.by_name(trial.suggest_categorical(SPACE_PARAM, self.names))
        n = int(number if number is not None else getattr(trial, "number", 0))
        return self.spaces[n % len(self.spaces)]

    def sample(self, trial: Any, number: int | None = None) -> tuple[str, dict[str, Any]]:
        """Draw ``(space name, flat params)`` for one trial."""
        space = self.pick(trial, number)
        return space.name, space.sample(trial, prefix=self.prefix(space.name), pins=self.pins)

    def column_types(self) -> dict[str, str]:
        """Parameter key → column type, across all spaces (types promoted where they differ)."""
        out: dict[str, str] = {}
        for s in self.spaces:
            for k, t in s.column_types().items():
                out[k] = promote_types(out[k], t) if k in out else t
        for k, v in self.pins.items():
            if k in out:
                out[k] = promote_types(out[k], _values_type([v]))
        return out

    def grid(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        if len(self.spaces) > 1 and self.selection == "searched":
            out[SPACE_PARAM] = self.names
        for s in self.spaces:
            out.update(s.grid(self.prefix(s.name)))
        for s in self.spaces:  # pinned keys are not drawn
            for k in self.pins:
                out.pop(self.prefix(s.name) + k, None)
        return out


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_space(
    path_or_name: str | Path, relative_to: str | Path | None = None, validate: bool = True
) -> SearchSpace:
    """Load a space from a YAML path or the name of a shipped space (``cam``, ``demo``...).

    Args:
        path_or_name: a file path (``.yaml``/``.yml``), or a bare name looked up among the
            shipped spaces.
        relative_to: folder that relative paths are resolved against (the spec's folder).
        validate: check keys, types and conditions against the method/loss constructors and the
            run config (see the module docstring).

    Raises:
        ConfigError: missing file, malformed YAML or an invalid space (naming file and key).
    """
    p = Path(path_or_name)
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1:
        from lesionsweep.search_spaces import space_path

        p = space_path(str(path_or_name))
    elif not p.is_absolute() and relative_to is not None:
        p = Path(relative_to) / p
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: malformed YAML: {e}") from None
    return space_from_dict(raw, source=str(p), default_name=p.stem, validate=validate)


def space_from_dict(
    raw: Any, source: str = "<space>", default_name: str = "space", validate: bool = True
) -> SearchSpace:
    """Build (and by default validate) a space from its parsed YAML."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{source}: a search space must be a mapping with keys {', '.join(_TOP_KEYS)}"
        )
    bad = sorted(set(raw) - set(_TOP_KEYS))
    if bad:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, bad))}; "
            f"allowed: {', '.join(_TOP_KEYS)}"
        )
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ConfigError(
            f"{source}: name {name!r} must be a non-empty string of letters, digits, _ . -"
        )
    desc = raw.get("description") or ""
    if not isinstance(desc, str):
        raise ConfigError(f"{source}: description must be a string, got {desc!r}")
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"{source}: base must be a mapping of flat section.key values")
    base = dict(base)
    for k in base:
        _check_key_form(k, source, "base")
    params_raw = raw.get("parameters") or {}
    if not isinstance(params_raw, Mapping):
        raise ConfigError(f"{source}: parameters must be a mapping of key -> distribution")
    params: list[Param] = []
    for key, body in params_raw.items():
        _check_key_form(key, source, "parameters")
        if key in base:
            raise ConfigError(
                f"{source}: {key!r} is both in base and in parameters; keep one of them"
            )
        params.append(_parse_param(key, body, source, [p for p in params]))
    space = SearchSpace(name=name, description=desc, base=base, params=tuple(params), source=source)
    if validate:
        validate_space(space)
    return space


def _check_key_form(key: Any, source: str, where: str) -> None:
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(
            f"{source}: {where} key {key!r} must be a flat run-config key 'section.key' "
            f"(sections: {', '.join(SECTIONS)})"
        )
    if "/" in key or SEPARATOR in key:
        raise ConfigError(f"{source}: {where} key {key!r} must not contain '/' or ':'")


def _parse_param(key: str, body: Any, source: str, earlier: list[Param]) -> Param:
    where = f"{source}: parameter {key!r}"
    if not isinstance(body, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping like {{choice: [...]}}, {{float: [lo, hi]}}, "
            f"{{int: [lo, hi]}} or {{const: v}}, got {body!r}"
        )
    bad = sorted(set(body) - set(_PARAM_KEYS))
    if bad:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, bad))}; "
            f"allowed: {', '.join(_PARAM_KEYS)}"
        )
    kinds = [k for k in _DIST_KEYS if k in body]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where}: give exactly one of {', '.join(_DIST_KEYS)}, got {kinds or 'none'}"
        )
    kind = kinds[0]
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if kind in ("choice", "const") and ("log" in body or "step" in body):
        raise ConfigError(f"{where}: log/step apply to float and int ranges only")
    try:
        dist: Distribution
        if kind == "choice":
            values = body["choice"]
            if not isinstance(values, list):
                raise ValueError(f"choice: expected a list of values, got {values!r}")
            dist = Choice(tuple(values))
        elif kind == "const":
            dist = Const(body["const"])
        else:
            bounds = body[kind]
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise ValueError(f"{kind}: expected [low, high], got {bounds!r}")
            lo, hi = (_as_number(b, f"{where}: {kind} bound") for b in bounds)
            if kind == "float":
                step = body.get("step")
                step = None if step is None else float(_as_number(step, f"{where}: step"))
                dist = FloatRange(float(lo), float(hi), log=log, step=step)
            else:
                if not all(float(b).is_integer() for b in (lo, hi)):
                    raise ValueError(f"int: bounds must be integers, got [{lo}, {hi}]")
                step = body.get("step", 1)
                step = _as_number(step, f"{where}: step")
                if not float(step).is_integer():
                    raise ValueError(f"int: step must be an integer, got {step!r}")
                dist = IntRange(int(lo), int(hi), log=log, step=int(step))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    when = _parse_when(body.get("when"), where, earlier)
    return Param(key=key, dist=dist, when=when)


def _parse_when(
    raw: Any, where: str, earlier: list[Param]
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{where}: when must be a mapping {{earlier.param: value or [values]}}, got {raw!r}"
        )
    by_key = {p.key: p for p in earlier}
    out = []
    for ref, vals in raw.items():
        if ref not in by_key:
            raise ConfigError(
                f"{where}: condition on {ref!r}, which is not an earlier parameter of this space; "
                f"parameters defined before it: {', '.join(by_key) or '(none)'}"
            )
        values = tuple(vals) if isinstance(vals, list) else (vals,)
        if not values:
            raise ConfigError(f"{where}: condition on {ref!r} lists no values")
        ref_dist = by_key[ref].dist
        for v in values:
            if not ref_dist.contains(v):
                raise ConfigError(
                    f"{where}: condition {ref} = {v!r} can never hold; {ref} is "
                    f"{ref_dist.describe()}"
                )
        out.append((ref, values))
    return tuple(out)


# --- key and type validation against constructors / dataclasses ---------------------------------


def _annotation_allows(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a (string) annotation; unknown annotation forms accept anything."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return True
    ann = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if not isinstance(ann, str) or not ann:
        return True
    parts = [a.strip() for a in _split_union(ann)]
    for part in parts:
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and _is_number(value):
            return True
        if part == "str" and isinstance(value, str):
            return True
        if part.startswith(("Literal[", "typing.Literal[")):
            inner = part[part.index("[") + 1 : -1]
            try:
                allowed = yaml.safe_load(f"[{inner}]")
            except yaml.YAMLError:
                return True
            if value in allowed:
                return True
        if part.startswith(("tuple", "list", "Sequence", "typing.", "Mapping", "dict")) and (
            isinstance(value, (list, tuple, dict))
        ):
            return True
        if part in ("Any", "object", "typing.Any"):
            return True
        if part not in ("None", "bool", "int", "float", "str") and not part.startswith(
            ("Literal[", "typing.Literal[", "tuple", "list", "Sequence", "Mapping", "dict")
        ):
            return True  # an annotation we do not model
    return False


def _split_union(ann: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in ann:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    if len(parts) == 1 and ann.startswith("Optional["):
        return [ann[len("Optional[") : -1], "None"]
    return parts


def _expected(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    return str(annotation)


def validate_key(
    key: str,
    values: Sequence[Any],
    source: str,
    method_names: Sequence[str],
    loss_names: Sequence[str],
    role: str = "parameter",
) -> None:
    """Check one flat key and the values it can take against the run config.

    Args:
        key: ``section.name`` (``data.options.<opt>`` allowed).
        values: the values it can take (choices, range ends, or the constant).
        source: file name for messages.
        method_names: the methods this key can apply to (``method.*`` keys must be accepted by
            every one of them).
        loss_names: likewise for ``loss.*`` keys.
        role: ``parameter`` or ``base`` (for messages).

    Raises:
        ConfigError: unknown section or key, or a value of the wrong type.
    """
    from lesionsweep.methods import loss_params, method_params
    from lesionsweep.methods import method_names as registered

    where = f"{source}: {role} {key!r}"
    sec, name = key.split(".", 1)
    if sec not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {sec!r}; allowed: {', '.join(SECTIONS)}")
    if sec in ("method", "loss") and name == "name":
        known = registered() if sec == "method" else _loss_names()
        for v in values:
            if v not in known:
                raise ConfigError(
                    f"{where}: {v!r} is not a registered {sec}; choose one of: {', '.join(known)}"
                )
        return
    if sec == "method":
        for m in method_names:
            params = method_params(m)
            if name not in params:
                raise ConfigError(
                    f"{where}: method {m!r} has no argument {name!r}; allowed: "
                    f"{', '.join(['name', *sorted(params)])}"
                )
            _check_values(
                where, values, params[name].annotation, params[name].default, f"method {m!r}"
            )
        return
    if sec == "loss":
        for lname in loss_names:
            params = loss_params(lname)
            if name not in params:
                raise ConfigError(
                    f"{where}: loss {lname!r} has no argument {name!r}; allowed: "
                    f"{', '.join(['name', *sorted(params)])}"
                )
            _check_values(
                where, values, params[name].annotation, params[name].default, f"loss {lname!r}"
            )
        return
    flds = section_fields(sec)
    if sec == "data" and name.startswith("options."):
        return  # dataset-specific options are checked by the dataset when the trial builds it
    if name not in flds:
        raise ConfigError(
            f"{where}: unknown key; allowed in {sec!r}: "
            f"{', '.join(sorted(flds) + (['options.<name>'] if sec == 'data' else []))}"
        )
    _check_values(where, values, flds[name].type, inspect.Parameter.empty, key)


def _loss_names() -> list[str]:
    from lesionsweep.methods import loss_names

    return loss_names()


def _check_values(
    where: str, values: Sequence[Any], annotation: Any, default: Any, owner: str
) -> None:
    ann = annotation
    if (ann is inspect.Parameter.empty or ann is None) and default not in (
        inspect.Parameter.empty,
        None,
    ):
        ann = type(default).__name__
    for v in values:
        if not _annotation_allows(ann, v):
            raise ConfigError(
                f"{where}: value {v!r} ({type(v).__name__}) has the wrong type; {owner} "
                f"expects {_expected(ann)}"
            )


def _possible(space: SearchSpace, key: str, default: Any, pins: Mapping[str, Any]) -> list[Any]:
    """Values ``key`` can take in this space (pins > params > space base > default)."""
    if key in pins:
        return [pins[key]]
    for p in space.params:
        if p.key == key:
            return list(p.dist.grid()) if isinstance(p.dist, (Choice, Const)) else [default]
    if key in space.base:
        return [space.base[key]]
    return [default]


def validate_space(
    space: SearchSpace,
    context: Mapping[str, Any] | None = None,
    pins: Mapping[str, Any] | None = None,
) -> None:
    """Validate a space's keys, value types and whole trial configs.

    Args:
        space: the parsed space.
        context: flat run-config values the sweep applies under the space (its ``data`` and
            ``base``); trial configs are built as ``space.base < context < params``.
        pins: keys the sweep pins (they replace a parameter's draws).

    Raises:
        ConfigError: naming ``space.source``, the key and what is allowed.
    """
    context = dict(context or {})
    pins = dict(pins or {})
    default_method = context.get("method.name", "cam")
    default_loss = context.get("loss.name", "bce")
    all_methods = _possible(
        space, "method.name", space.base.get("method.name", default_method), pins
    )
    all_losses = _possible(space, "loss.name", space.base.get("loss.name", default_loss), pins)
    if "method.name" in context:
        all_methods = [context["method.name"]]
    if "loss.name" in context:
        all_losses = [context["loss.name"]]

    def restricted(p: Param | None, ref: str, universe: list[Any]) -> list[Any]:
        if p is None:
            return universe
        for k, allowed in p.when:
            if k == ref:
                return [u for u in universe if u in allowed]
        return universe

    for key in ("method.name", "loss.name"):
        vals = all_methods if key == "method.name" else all_losses
        validate_key(key, vals, space.source, [], [], role="value of")
    for k, v in space.base.items():
        validate_key(k, [v], space.source, all_methods, all_losses, role="base")
    for p in space.params:
        values = (
            list(p.dist.representatives())
            if not isinstance(p.dist, Choice)
            else list(p.dist.values)
        )
        if isinstance(p.dist, FloatRange):
            values = [float(v) for v in values]
        validate_key(
            p.key,
            values,
            space.source,
            restricted(p, "method.name", all_methods),
            restricted(p, "loss.name", all_losses),
        )
    # whole trial configs from representative draws
    for draw in space.representative_draws():
        flat = {**space.base, **context, **draw, **{k: v for k, v in pins.items() if k in draw}}
        try:
            config_from_flat(flat, source=space.source)
        except ConfigError as e:
            shown = json.dumps(draw, default=str)
            raise ConfigError(f"{e} (trial config built from the draw {shown})") from None
