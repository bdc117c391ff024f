"""Values typed once, at the edge: YAML reading and the one annotation-driven conversion.

Every value that comes from a YAML file or a ``--set`` override is converted to its declared
type exactly once, where the config is built, by :func:`convert`; from then on it is trusted
(constructors do not cast). The declared type is a typing annotation: a run-config dataclass
field, a method/loss constructor parameter (:meth:`Registry.hints`) or a sweep-spec field. What
:func:`convert` understands:

* ``bool``, ``int``, ``float``, ``str`` (an ``int`` is widened to ``float``, an integral float
  narrowed to ``int``; numeric strings are read as numbers; ``bool`` is never a number);
* ``X | None`` and other unions (the first arm that takes the value wins; a value that already
  has an arm's type keeps it);
* ``Literal[a, b]``: one of the listed values;
* ``tuple[X, ...]``, ``Sequence[X]``, ``list[X]``: a YAML list, each item converted;
* ``Mapping``/``dict``: a YAML mapping (copied);
* ``Annotated[X, meta...]``: converted as ``X``, then checked by each ``meta``: a
  :class:`Range` (inclusive bounds) or a registry-like object with ``names()`` (the value must be
  one of the names, e.g. a method's ``pooling``);
* anything else (``Any``, classes): passed through.

A failure is one :class:`ConfigError` naming where (``file: section.key``), the value and the
expected type.
"""

from __future__ import annotations

import collections.abc
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from .errors import ConfigError

__all__ = ["Range", "convert", "describe", "plain", "read_yaml", "parse_yaml_value", "YamlLoader"]


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for a number (``Annotated[int, Range(1, 10_000)]``); ``None`` = open.

    Attributes:
        low, high: the bounds.
        why: a short reason shown when a value is out of range.
    """

    low: float | None = None
    high: float | None = None
    why: str = ""

    def check(self, value: Any, where: str) -> None:
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            why = f" ({self.why})" if self.why else ""
            raise ConfigError(f"{where} = {value!r} is out of range; allowed: [{lo}, {hi}]{why}")


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` and ``1E5`` are floats (YAML 1.2), not strings."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml_value(text: str, where: str) -> Any:
    """One ``--set`` value parsed as YAML (``1e-3`` is a float, ``[a, b]`` a list)."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: value is not valid YAML: {e}") from None


def read_yaml(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """Read a YAML file whose top level must be a non-empty mapping.

    Args:
        path: the file.
        what: what the file is, for messages ("sweep spec", "run config").
        hint: appended to the message for an empty or non-mapping file (the keys expected).

    Raises:
        ConfigError: missing file, not UTF-8 text (a binary file), malformed YAML, an empty
            file, or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not a text file (byte {e.start} is not UTF-8); expected a YAML {what}"
        ) from None
    return parse_yaml_mapping(text, str(p), what, hint)


def parse_yaml_mapping(text: str, source: str, what: str, hint: str = "") -> dict[str, Any]:
    """:func:`read_yaml` on text already read (``source`` names it in messages)."""
    if "\x00" in text:
        raise ConfigError(f"{source}: not a text file (it holds NUL bytes); expected a YAML {what}")
    try:
        raw = yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed YAML: {e}") from None
    tail = f"; {hint}" if hint else ""
    if raw is None or raw == {}:
        raise ConfigError(f"{source}: the {what} is empty; nothing would be configured{tail}")
    if not isinstance(raw, collections.abc.Mapping):
        raise ConfigError(
            f"{source}: a {what} must be a mapping of keys, got a {type(raw).__name__}{tail}"
        )
    return dict(raw)


# --- conversion --------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_from_str(v: str) -> int | float | None:
    s = v.strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    try:
        return float(s)
    except ValueError:
        return None


def describe(annotation: Any) -> str:
    """A short human description of an annotation ("a number (float)", "one of: a, b")."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is object:
        return "any value"
    if origin is Annotated:
        inner, *meta = typing.get_args(annotation)
        for m in meta:
            if hasattr(m, "names"):
                return f"one of: {', '.join(map(str, m.names()))}"
        rng = [m for m in meta if isinstance(m, Range)]
        text = describe(inner)
        if rng:
            lo = "-inf" if rng[0].low is None else f"{rng[0].low:g}"
            hi = "inf" if rng[0].high is None else f"{rng[0].high:g}"
            text += f" in [{lo}, {hi}]"
        return text
    if origin is Literal:
        return f"one of: {', '.join(map(repr, typing.get_args(annotation)))}"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number (float)"
    if annotation is str:
        return "a string"
    if origin in (tuple, list, collections.abc.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        nouns = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}
        item = args[0] if args else Any
        return f"a list of {nouns.get(item) or describe(item)}"
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    """Internal: the value does not fit (the caller words the message)."""


def convert(value: Any, annotation: Any, where: str, owner: str = "") -> Any:
    """Convert a YAML value to ``annotation`` (see the module docstring) or raise.

    Args:
        value: the parsed YAML value.
        annotation: a resolved typing annotation (not a string).
        where: ``file: section.key`` for messages.
        owner: who declares the type, for messages ("method 'cam'").

    Raises:
        ConfigError: ``"{where} = {value!r}: expected {describe(annotation)}[ for {owner}]"``,
            or an out-of-range / not-allowed message from an ``Annotated`` check.
    """
    try:
        return _convert(value, annotation, where)
    except _Mismatch:
        by = f" for {owner}" if owner else ""
        raise ConfigError(f"{where} = {value!r}: expected {describe(annotation)}{by}") from None


def _convert(value: Any, ann: Any, where: str) -> Any:
    if ann is Any or ann is object or ann is None:
        return value
    if isinstance(ann, str):  # an unresolved annotation: nothing to check against
        return value
    origin = typing.get_origin(ann)
    if origin is Annotated:
        inner, *meta = typing.get_args(ann)
        out = _convert(value, inner, where)
        for m in meta:
            if isinstance(m, Range) and out is not None:
                m.check(out, where)
            elif hasattr(m, "names") and out is not None and out not in m.names():
                raise ConfigError(
                    f"{where} = {out!r} is not allowed; choose one of: {', '.join(m.names())}"
                )
        return out
    if origin is Literal:
        allowed = typing.get_args(ann)
        for a in allowed:
            if type(a) is type(value) and a == value:
                return value
        if isinstance(value, int) and not isinstance(value, bool):
            for a in allowed:  # 1 for 1.0
                if _is_number(a) and a == value:
                    return a
        raise ConfigError(
            f"{where} = {value!r} is not allowed; choose one of: "
            f"{', '.join(str(a) for a in allowed)}"
        )
    if origin in (Union, types.UnionType):
        arms = typing.get_args(ann)
        if value is None:
            if type(None) in arms:
                return None
            raise _Mismatch
        for arm in arms:  # a value that already has an arm's type keeps it
            if arm in (bool, int, float, str) and type(value) is arm:
                return _convert(value, arm, where)
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if value is None:
        if ann is type(None):
            return None
        raise _Mismatch
    if ann is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if ann is int:
        if isinstance(value, str):
            value = _number_from_str(value)
        if isinstance(value, bool) or not _is_number(value):
            raise _Mismatch
        if isinstance(value, float):
            if not value.is_integer():
                raise _Mismatch
            return int(value)
        return value
    if ann is float:
        if isinstance(value, str):
            value = _number_from_str(value)
        if not _is_number(value) or not math.isfinite(float(value)):
            raise _Mismatch
        return float(value)
    if ann is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (tuple, list, collections.abc.Sequence) or ann in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or ann is tuple else items
    if origin in (dict, collections.abc.Mapping) or ann in (dict, collections.abc.Mapping):
        if not isinstance(value, collections.abc.Mapping):
            raise _Mismatch
        return dict(value)
    if ann is type(None):
        raise _Mismatch
    return value


def plain(x: Any) -> Any:
    """Tuples as lists and mappings as dicts, recursively (what ``yaml.safe_dump`` writes)."""
    if isinstance(x, collections.abc.Mapping):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x
