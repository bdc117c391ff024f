"""Checking a search space before any trial starts.

Every key a space names is checked against the run config: ``method.*`` / ``loss.*`` keys
against the constructors of every method / loss the key can apply to, the other sections against
the run-config dataclasses. Every value a parameter can take (each choice, each range end and, for
a float range, a non-integral point inside it) is converted with the one conversion of the
config layer (:func:`lesionsweep.config.convert_key`), so a typo such as
``method.pooling: {choice: [gap, lsee]}`` fails here with the file, the key, the value and what
is allowed. Then:

* every method the space can reach is checked against every image size it can reach with that
  method (``data.image_size`` must be a multiple of the method's ``input_multiple``; int ranges
  are enumerated, choices listed), and
* whole trial configs are built from representative draws.

Errors are :class:`~lesionsweep.errors.ConfigError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lesionsweep.methods import LOSSES, METHODS

from ..config import SECTIONS, DataConfig, config_from_flat, convert_key
from ..errors import ConfigError
from .spaces_distributions import Choice, Const, Distribution, FloatRange, IntRange
from .spaces_model import Param, SearchSpace

__all__ = ["validate_key", "validate_space", "reachable_values", "reachable_backbones"]


def _candidates(dist: Distribution) -> list[Any]:
    """Values to type-check for a distribution: all choices, the ends of a range and, for a
    float range, a point inside that is not a whole number (so an int key refuses it)."""
    if isinstance(dist, Choice):
        return list(dist.values)
    if isinstance(dist, Const):
        return [dist.value]
    if isinstance(dist, FloatRange):
        inside = dist.low + (dist.high - dist.low) * 0.37
        if float(inside).is_integer():
            inside += (dist.high - dist.low) * 0.01
        return [float(dist.low), float(dist.high), float(inside)]
    return list(dist.representatives())


def reachable_values(dist: Distribution, limit: int = 100_000) -> list[Any] | None:
    """Every value ``dist`` can produce, or ``None`` when that is not a finite list
    (a float range without step, or more than ``limit`` values)."""
    if isinstance(dist, (Choice, Const)):
        return list(dist.grid())
    if isinstance(dist, IntRange):
        if (dist.high - dist.low) // dist.step + 1 > limit:
            return None
        return list(range(dist.low, dist.high + 1, dist.step))
    if dist.step is not None and (dist.high - dist.low) / dist.step + 1 <= limit:
        return dist.grid()
    return None


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
        ConfigError: unknown section or key, or a value of the wrong type, e.g.
            ``"cam.yaml: parameter method.pooling = 'lsee' is not allowed; choose one of: gap,
            gmp, lse, pcam, wildcat"``.
    """
    sec, name = key.split(".", 1)
    if sec not in SECTIONS:
        raise ConfigError(
            f"{source}: {role} {key!r}: unknown section {sec!r}; allowed: {', '.join(SECTIONS)}"
        )
    if sec in ("method", "loss") and name != "name":
        for component in method_names if sec == "method" else loss_names:
            for v in values:
                convert_key(sec, name, v, source, component=component, role=role)
        return
    for v in values:
        convert_key(sec, name, v, source, role=role)


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


def _restricted(p: Param | None, ref: str, universe: list[Any]) -> list[Any]:
    if p is None:
        return universe
    for k, allowed in p.when:
        if k == ref:
            return [u for u in universe if u in allowed]
    return universe


def _check_sizes_for_methods(
    space: SearchSpace, methods: list[Any], context: Mapping[str, Any], pins: Mapping[str, Any]
) -> None:
    """Every image size reachable with each reachable method fits the method's input_multiple."""
    key = "data.image_size"
    fallback = context.get(key, space.base.get(key, DataConfig.image_size))
    origin = (
        "set by the spec"
        if key in context
        else ("the space's base" if key in space.base else "the run-config default")
    )
    param = next((p for p in space.params if p.key == key), None)
    for m in methods:
        mult = int(getattr(METHODS.get(m), "input_multiple", 1) or 1)
        sizes: list[tuple[Any, str]] = []
        if key in pins:
            sizes = [(pins[key], "pinned by the spec")]
        elif param is not None and m in _restricted(param, "method.name", [m]):
            values = reachable_values(param.dist)
            if values is None:
                raise ConfigError(
                    f"{space.source}: parameter {key}: {param.dist.describe()} cannot be checked "
                    f"against method {m!r}'s input_multiple {mult}; give a choice or an int "
                    f"range with step {mult}"
                )
            sizes = [(v, f"parameter {param.dist.describe()}") for v in values]
            if any(ref != "method.name" for ref, _ in param.when):
                sizes.append((fallback, origin))  # it can be inactive: the fallback is reachable
        else:
            sizes = [(fallback, origin)]
        for size, why in sizes:
            if isinstance(size, int) and size % mult:
                raise ConfigError(
                    f"{space.source}: method {m!r} needs data.image_size to be a multiple of "
                    f"{mult}, but this space reaches data.image_size = {size} ({why})"
                )


def validate_space(
    space: SearchSpace,
    context: Mapping[str, Any] | None = None,
    pins: Mapping[str, Any] | None = None,
) -> None:
    """Validate a space's keys, value types, method/image-size combinations and trial configs.

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
    for key, registry in (("method.name", METHODS), ("loss.name", LOSSES)):
        vals = all_methods if key == "method.name" else all_losses
        for v in vals:
            if v not in registry:
                raise ConfigError(
                    f"{space.source}: {key} = {v!r} is not a registered {registry.kind}; "
                    f"choose one of: {', '.join(registry.names())}"
                )
    for k, v in space.base.items():
        validate_key(k, [v], space.source, all_methods, all_losses, role="base")
    for p in space.params:
        validate_key(
            p.key,
            _candidates(p.dist),
            space.source,
            _restricted(p, "method.name", all_methods),
            _restricted(p, "loss.name", all_losses),
        )
    _check_sizes_for_methods(space, all_methods, context, pins)
    # whole trial configs from representative draws
    for draw in space.representative_draws():
        flat = {**space.base, **context, **draw, **{k: v for k, v in pins.items() if k in draw}}
        try:
            config_from_flat(flat, source=space.source)
        except ConfigError as e:
            shown = json.dumps(draw, default=str)
            raise ConfigError(f"{e} (trial config built from the draw {shown})") from None


def reachable_backbones(
    space: SearchSpace, context: Mapping[str, Any], pins: Mapping[str, Any], spec_source: str
) -> dict[str, str]:
    """Every ``method.backbone`` a trial of ``space`` can build, with where it comes from.

    For each method the space can reach that takes a ``backbone``: the pinned value, else the
    parameter's values plus, when the parameter can be inactive or is absent, the value the
    trial config falls back to (spec > space base > the method's default). A value set but
    always overridden is listed too (a typo there is worth a message as well).

    Returns:
        ``{name: where}``, where naming the file and the place in it (the spec's for a value the
        spec sets, else the space's).
    """
    key = "method.backbone"
    default_method = context.get("method.name", space.base.get("method.name", "cam"))
    methods = _possible(space, "method.name", default_method, pins)
    param = next((p for p in space.params if p.key == key), None)
    out: dict[str, str] = {}
    for m in methods:
        arg = METHODS.params(m).get("backbone") if m in METHODS else None
        if arg is None:
            continue
        if key in pins:
            out.setdefault(str(pins[key]), f"{spec_source}: base")
            continue
        if param is not None and m in _restricted(param, "method.name", [m]):
            for v in reachable_values(param.dist) or []:
                out.setdefault(str(v), f"{space.source}: parameter")
            if not param.when:
                continue
        if key in context:
            out.setdefault(str(context[key]), f"{spec_source}: base")
        elif key in space.base:
            out.setdefault(str(space.base[key]), f"{space.source}: base")
        elif isinstance(arg.default, str):
            out.setdefault(arg.default, f"{space.source}: method {m!r}'s default")
    return out
