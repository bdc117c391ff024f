"""Search-space distributions: validated value objects, and a trial-like random suggester.

Each distribution (:class:`Choice`, :class:`FloatRange`, :class:`IntRange`, :class:`Const`) checks
itself on construction (empty ranges, log ranges with ``low <= 0``, bad steps raise
``ValueError``), draws through the ``suggest_*`` methods of an Optuna trial (or anything shaped
like one, :class:`Suggester`), and knows its values (``contains``, ``representatives``, ``grid``)
and its results column type (:func:`column_type`). Nothing here imports Optuna.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Scalar",
    "Suggester",
    "Choice",
    "FloatRange",
    "IntRange",
    "Const",
    "Distribution",
    "RandomSuggester",
    "column_type",
    "promote_types",
    "values_type",
    "is_number",
]

Scalar = str | int | float | bool


class Suggester(Protocol):
    """The subset of ``optuna.trial.Trial`` a space needs."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...


def is_number(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
            is_number(value) and any(is_number(v) and v == value for v in self.values)
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
        return is_number(value) and self.low <= value <= self.high

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
            is_number(value)
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
    return values_type(values)


def values_type(values: Sequence[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int64"
    if all(is_number(v) for v in values):
        return "float64"
    return "string"


def promote_types(a: str, b: str) -> str:
    """The column type that holds values of both types."""
    if a == b:
        return a
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "string"


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
