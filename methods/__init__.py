"""Localization methods (``lesionsweep.methods``): the contract, the registry and the methods.

Adding a method = one module + one import line below + one search-space YAML.
"""

from __future__ import annotations

from .base import (
    METHODS,
    Method,
    MethodOutput,
    create_method,
    method_class,
    method_names,
    method_params,
    register_method,
)
from .losses import LOSSES, create_loss, loss_names, loss_params
from .pooling import POOLINGS
from .registry import Registry

# isort: split
# --- method modules (each registers itself on import) ---
from . import (  # noqa: F401
    cam,
    minmax_entropy,
    multiscale,
    pylon,
    wsmis,  # noqa: F401
)

__all__ = [
    "LOSSES",
    "METHODS",
    "POOLINGS",
    "Registry",
    "Method",
    "MethodOutput",
    "create_method",
    "method_class",
    "method_names",
    "method_params",
    "register_method",
    "create_loss",
    "loss_names",
    "loss_params",
]
