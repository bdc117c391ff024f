"""The method contract and registry.

Every localization method is an :class:`nn.Module` subclass of :class:`Method` that

* takes images ``[B, C, H, W]`` (float, already normalised; C is 1 or 3),
* returns ONE :class:`MethodOutput`: image-level logits ``[B, K]``, class-wise localization maps
  ``[B, K, h, w]`` (what the paper shows as its heatmap; ``map_kind`` says whether they are
  logits, probabilities or normalised scores) and optional ``extras`` (tensors for the loss or for
  logging),
* owns its loss: ``method.loss(output, targets, target_mask)`` returns a scalar tensor. The
  classification criterion (BCE, PCAM's batch-weighted BCE, W-CEL, focal) is a component passed in
  as ``criterion``; methods that change the objective add their own terms.

Methods are registered by name in :data:`METHODS` (a
:class:`~lesionsweep.methods.registry.Registry`) with :func:`register_method` and built with
:func:`create_method`, which refuses unknown keyword arguments and lists the allowed ones.
Defaults live in the constructors only, and constructors trust their arguments' types: the
config layer converts YAML values once, from the constructor annotations
(:meth:`Registry.hints`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .losses import LOSSES
from .registry import Registry

__all__ = [
    "METHODS",
    "Method",
    "MethodOutput",
    "register_method",
    "create_method",
    "method_names",
    "method_class",
    "method_params",
]


@dataclass
class MethodOutput:
    """The one output type of every method.

    Attributes:
        logits: image-level logits, float ``[B, K]``.
        maps: class-wise localization maps, float ``[B, K, h, w]`` (h, w: the method's map
            resolution, usually a fraction of the input).
        extras: optional named tensors (loss inputs, logging).
    """

    logits: torch.Tensor
    maps: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of all localization methods.

    Subclasses set ``map_kind`` ("logits", "probabilities" or "normalized") and implement
    :meth:`forward`. The default :meth:`loss` applies ``self.criterion`` to the image logits.
    """

    map_kind: ClassVar[str] = "logits"
    name: ClassVar[str] = ""
    #: input sides must be a multiple of this (e.g. PYLON needs 256); contract tests use it
    input_multiple: ClassVar[int] = 32
    #: ``None``: the trainer's own loop trains the method (one stage). A multi-stage method
    #: names the staged runner of the training layer that runs its stages instead
    #: (:mod:`lesionsweep.training.runners`; e.g. ``"wsmis"``).
    runner: ClassVar[str | None] = None
    #: constructor arguments for short CPU runs on small images (a 96-256 px phantom, a few
    #: epochs), merged over the defaults by the slow learning test and quick demos. Only what
    #: the small scale itself needs (a small backbone where the default is large, a stride-16
    #: map where stride 32 leaves 3x3 cells); empty when the defaults already fit.
    small_scale_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init__(self, num_classes: int, criterion: nn.Module | None = None) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        if criterion is None:
            criterion = LOSSES.create("bce")
        self.criterion = criterion

    def forward(self, x: torch.Tensor) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(
        self,
        output: MethodOutput,
        targets: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar training loss for a batch (targets float ``[B, K]``, mask ``[B, K]``)."""
        return self.criterion(output.logits, targets, target_mask)

    def localization_maps(self, output: MethodOutput) -> torch.Tensor:
        """Maps used for evaluation (``[B, K, h, w]``); by default ``output.maps``."""
        return output.maps


def _set_name(name: str, cls: type[Method]) -> None:
    cls.name = name


#: the method registry (see :class:`~lesionsweep.methods.registry.Registry` for its contract)
METHODS: Registry[Method] = Registry(
    "method", base=Method, reserved=("num_classes", "criterion"), on_register=_set_name
)
_REGISTRY = METHODS  # the name tests use to drop throw-away methods

M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` under ``name`` (duplicates are refused)."""
    return METHODS.register(name)


def method_names() -> list[str]:
    """Sorted names of the registered methods."""
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    """The registered class for ``name``; :class:`UnknownNameError` (a ``KeyError``) lists the
    registered names."""
    return METHODS.get(name)


def method_params(name: str) -> dict[str, inspect.Parameter]:
    """Constructor parameters of a method (excluding ``self``, ``num_classes``, ``criterion``)."""
    return METHODS.params(name)


def create_method(name: str, num_classes: int, **kwargs: Any) -> Method:
    """Build a registered method; unknown kwargs raise ``TypeError`` listing the allowed ones.

    ``loss`` (a loss name) and ``loss_kwargs`` (a dict) may be given instead of a ``criterion``
    module.
    """
    loss_name = kwargs.pop("loss", None)
    loss_kwargs = kwargs.pop("loss_kwargs", None) or {}
    METHODS.check_kwargs(name, kwargs, extra=("criterion",))
    if loss_name is not None or loss_kwargs:
        if "criterion" in kwargs:
            raise TypeError("give either 'criterion' or 'loss'/'loss_kwargs', not both")
        kwargs["criterion"] = LOSSES.create(loss_name or "bce", **loss_kwargs)
    return METHODS.create(name, num_classes=num_classes, **kwargs)
