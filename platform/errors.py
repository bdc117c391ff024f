"""Error types with messages that name the file, key or row and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class LesionSweepError(Exception):
    """Base class for user-facing errors: the CLI prints the message and exits non-zero."""


class ConfigError(LesionSweepError, ValueError):
    """A config, spec or search-space file is malformed or names an unknown key/value."""


class DataError(LesionSweepError, ValueError):
    """A dataset file is missing, has wrong columns, an unreadable image or a bad row."""


class TrainingError(LesionSweepError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class UnknownNameError(ConfigError, KeyError):
    """A name that no registry holds (a :class:`ConfigError` that is also a ``KeyError``)."""

    __str__ = BaseException.__str__  # KeyError would quote the message


def unknown_keys_message(
    given: Iterable[Any],
    allowed: Iterable[str],
    where: str,
    what: str = "key",
    prefix: str = "",
    owner: str = "",
) -> str | None:
    """The one "unknown key(s) …; allowed: …" message, or ``None`` when every key is allowed.

    Args:
        given: the keys found (a mapping's keys, a list of names).
        allowed: the keys that are allowed.
        where: the file (or what the keys belong to), for the message.
        what: the noun ("key", "argument", "option", "section").
        prefix: shown before each unknown key (``"optim."`` gives ``'optim.lrr'``).
        owner: who does not take them ("method 'cam'"), shown as "for method 'cam'".

    Returns:
        e.g. ``"run.yaml: unknown key 'method.poolin' for method 'cam'; allowed: backbone,
        pooling, ..."``.
    """
    allowed_list = sorted(allowed)
    bad = sorted((k for k in given if k not in allowed_list), key=str)
    if not bad:
        return None
    plural = "s" if len(bad) > 1 else ""
    keys = ", ".join(repr(f"{prefix}{k}") for k in bad)
    by = f" for {owner}" if owner else ""
    return (
        f"{where}: unknown {what}{plural} {keys}{by}; "
        f"allowed: {', '.join(allowed_list) or '(none)'}"
    )


def check_keys(
    given: Iterable[Any],
    allowed: Iterable[str],
    where: str,
    what: str = "key",
    prefix: str = "",
    owner: str = "",
    error: type[Exception] = ConfigError,
) -> None:
    """Raise ``error`` (default :class:`ConfigError`) with :func:`unknown_keys_message` when
    ``given`` holds a key that is not in ``allowed``."""
    msg = unknown_keys_message(given, allowed, where, what, prefix, owner)
    if msg:
        raise error(msg)


def is_test_split(split: str) -> bool:
    """Whether ``split`` names a test split (``test``, ``test-loc``, any case)."""
    return str(split).strip().lower().startswith("test")


def refuse_test_split(split: str, where: str) -> None:
    """The one test-split guard: training, validation and sweeps never touch a test split.

    Raises:
        ConfigError: ``split`` is a test split; the message names ``where`` and the command
            that may read it.
    """
    if is_test_split(split):
        raise ConfigError(
            f"{where} = {split!r}: a test split is reachable only through "
            "`lesionsweep evaluate --split test|test-loc`, never during training or a sweep"
        )
