"""Reading a search space: YAML file or mapping → a :class:`SearchSpace` (then validated).

The format (see :mod:`lesionsweep.sweep.spaces`): top-level keys ``name``, ``description``,
``base``, ``parameters``; each parameter one distribution (``choice``, ``float``, ``int``,
``const``) with optional ``log``, ``step`` and ``when``. Every shape error is a
:class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesionsweep.search_spaces import space_path

from ..config import SECTIONS
from ..errors import ConfigError, check_keys
from ..values import convert, read_yaml
from .spaces_distributions import Choice, Const, Distribution, FloatRange, IntRange
from .spaces_model import SEPARATOR, Param, SearchSpace
from .spaces_validate import validate_space

__all__ = ["load_space", "space_from_dict", "TOP_KEYS"]

TOP_KEYS = ("name", "description", "base", "parameters")
_DIST_KEYS = ("choice", "float", "int", "const")
_PARAM_KEYS = (*_DIST_KEYS, "log", "step", "when")


def _number(v: Any, where: str) -> int | float:
    """A range bound or step: an int stays an int, anything else numeric becomes a float."""
    return convert(v, int | float, where)


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
        p = space_path(str(path_or_name))
    elif not p.is_absolute() and relative_to is not None:
        p = Path(relative_to) / p
    raw = read_yaml(p, "search space", hint=f"keys: {', '.join(TOP_KEYS)}")
    return space_from_dict(raw, source=str(p), default_name=p.stem, validate=validate)


def space_from_dict(
    raw: Any, source: str = "<space>", default_name: str = "space", validate: bool = True
) -> SearchSpace:
    """Build (and by default validate) a space from its parsed YAML."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{source}: a search space must be a mapping with keys {', '.join(TOP_KEYS)}"
        )
    check_keys(raw, TOP_KEYS, source, what="top-level key")
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
    check_keys(body, _PARAM_KEYS, where)
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
            lo, hi = (_number(b, f"{where}: {kind} bound") for b in bounds)
            if kind == "float":
                step = body.get("step")
                step = None if step is None else float(_number(step, f"{where}: step"))
                dist = FloatRange(float(lo), float(hi), log=log, step=step)
            else:
                if not all(float(b).is_integer() for b in (lo, hi)):
                    raise ValueError(f"int: bounds must be integers, got [{lo}, {hi}]")
                step = body.get("step", 1)
                step = _number(step, f"{where}: step")
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
