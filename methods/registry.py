"""One registry class for every family of named components (methods, losses, poolings, datasets).

A :class:`Registry` maps names to classes (or factories). Its contract, the same for every
family:

* ``register(name)`` is a class decorator; a second registration of a name is refused
  (``ValueError`` naming the class that holds it);
* ``names()`` lists the registered names, sorted;
* ``get(name)`` returns the registered object, or raises :class:`ConfigError` listing the names;
* ``params(name)`` returns the constructor's keyword parameters (``inspect.Parameter`` objects,
  annotations as written) minus the ones the builder supplies itself (``reserved``);
* ``hints(name)`` returns those parameters' annotations resolved to typing objects (``Literal``,
  unions, ``Annotated``), which is what the config layer converts YAML values against;
* ``create(name, **kwargs)`` refuses unknown keyword arguments (``TypeError`` listing the allowed
  ones) and calls the constructor. Values are NOT converted here: the config layer converts them
  once, from :meth:`hints`, when a run config is built.

A registry can also be used as the metadata of an ``Annotated[str, registry]`` annotation: the
config layer then accepts exactly the registered names for that argument (e.g. a method's
``pooling``).

This module is part of the bottom layer: it imports only the standard library and
:mod:`lesionsweep.errors`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from lesionsweep.errors import UnknownNameError, unknown_keys_message

__all__ = ["Registry"]

T = TypeVar("T")
C = TypeVar("C")


class Registry(Generic[T]):
    """Name → component class for one family (``kind``: "method", "loss", "pooling"...).

    ``T`` is the type of the built components (``Registry[Method]`` holds ``type[Method]``
    entries and :meth:`create` returns a ``Method``).

    Args:
        kind: what the components are, for messages ("method").
        plural: the plural of ``kind`` (default ``kind + "s"``).
        base: when given, only subclasses of it may be registered.
        reserved: constructor parameters the builder passes itself (e.g. a method's
            ``num_classes`` and ``criterion``); they are not part of :meth:`params`.
        on_register: called as ``on_register(name, obj)`` after a registration (e.g. to set a
            class attribute ``name``).
    """

    def __init__(
        self,
        kind: str,
        base: type | None = None,
        plural: str | None = None,
        reserved: tuple[str, ...] = (),
        on_register: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.base = base
        self.reserved = ("self", *reserved)
        self._on_register = on_register
        self._entries: dict[str, type[T]] = {}

    # --- registration -------------------------------------------------------------------------

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator registering the class under ``name`` (duplicates are refused)."""

        def deco(obj: C) -> C:
            self.add(name, obj)  # C is a type[T]
            return obj

        return deco

    def add(self, name: str, obj: type[T]) -> None:
        """Register ``obj`` under ``name``.

        Raises:
            ValueError: ``name`` is already registered.
            TypeError: ``obj`` is not a subclass of ``base``.
        """
        if name in self._entries:
            held = self._entries[name]
            raise ValueError(
                f"{self.kind} name {name!r} is already registered by "
                f"{getattr(held, '__module__', '?')}.{getattr(held, '__qualname__', held)!s}"
            )
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(
                f"{obj!r} registered as {self.kind} {name!r} is not a {self.base.__name__} subclass"
            )
        self._entries[name] = obj
        if self._on_register is not None:
            self._on_register(name, obj)

    def pop(self, name: str, default: Any = None) -> Any:
        """Remove ``name`` (tests that register throw-away components)."""
        return self._entries.pop(name, default)

    # --- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        """The component registered under ``name``.

        Raises:
            UnknownNameError: unknown name (a ``ConfigError`` and a ``KeyError``; the message
                lists the registered names).
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> type[T]:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    # --- constructor signatures ---------------------------------------------------------------

    def _init(self, name: str) -> Callable[..., Any]:
        obj: Any = self.get(name)
        return obj.__init__ if isinstance(obj, type) else obj  # type: ignore[misc]

    def params(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword parameters of ``name``'s constructor (``reserved`` and ``*args`` left out)."""
        sig = inspect.signature(self._init(name))
        return {
            k: p
            for k, p in sig.parameters.items()
            if k not in self.reserved and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def hints(self, name: str) -> dict[str, Any]:
        """Resolved annotations of :meth:`params` (``Any`` where a parameter has none).

        ``Annotated`` metadata is kept (``include_extras``) so registries used as enumerations
        reach the converter.
        """
        fn = self._init(name)
        try:
            resolved = typing.get_type_hints(fn, include_extras=True)
        except Exception:  # an annotation that cannot be resolved: fall back to "anything"
            resolved = {}
        return {k: resolved.get(k, Any) for k in self.params(name)}

    def defaults(self, name: str) -> dict[str, Any]:
        """Constructor defaults of :meth:`params` (parameters without one are left out)."""
        return {k: p.default for k, p in self.params(name).items() if p.default is not p.empty}

    def check_kwargs(
        self, name: str, kwargs: Mapping[str, Any], extra: tuple[str, ...] = ()
    ) -> None:
        """Raise ``TypeError`` for keyword arguments ``name``'s constructor does not take."""
        allowed = [*self.params(name), *extra]
        msg = unknown_keys_message(kwargs, allowed, f"{self.kind} {name!r}", what="argument")
        if msg:
            raise TypeError(msg)

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build ``name`` with ``kwargs`` (unknown ones: ``TypeError`` listing the allowed)."""
        self.check_kwargs(name, kwargs, extra=tuple(k for k in self.reserved if k != "self"))
        return self.get(name)(**kwargs)
