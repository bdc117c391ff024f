"""Search spaces as values: a parameter, a space, and the set of spaces one sweep draws from.

:class:`SearchSpace` holds what :mod:`.spaces_parse` read and :mod:`.spaces_validate` checked;
:meth:`SearchSpace.sample` is the define-by-run draw of one trial; :class:`SpaceSet` spreads a
sweep's trials over several spaces. Nothing here imports Optuna.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..values import plain
from .spaces_distributions import (
    Const,
    Distribution,
    IntRange,
    Suggester,
    column_type,
    is_number,
    promote_types,
    values_type,
)

__all__ = ["Param", "SearchSpace", "SpaceSet", "SPACE_PARAM", "SEPARATOR"]

SPACE_PARAM = "space"
SEPARATOR = ":"


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
            if not any(type(v) is type(a) and v == a or (is_number(v) and v == a) for a in allowed):
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

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict in the space file format (what :func:`load_space` reads)."""
        params: dict[str, Any] = {}
        for p in self.params:
            d = p.dist
            body: dict[str, Any]
            if isinstance(d, Const):
                body = {"const": plain(d.value)}
            elif isinstance(d, IntRange):
                body = {"int": [d.low, d.high]}
                if d.log:
                    body["log"] = True
                if d.step != 1:
                    body["step"] = d.step
            elif hasattr(d, "values"):
                body = {"choice": list(d.values)}
            else:
                body = {"float": [d.low, d.high]}
                if d.log:
                    body["log"] = True
                if d.step is not None:
                    body["step"] = d.step
            if p.when:
                body["when"] = {k: list(v) for k, v in p.when}
            params[p.key] = body
        return {
            "name": self.name,
            "description": self.description,
            "base": plain(self.base),
            "parameters": params,
        }

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
                out[k] = promote_types(out[k], values_type([v]))
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
