"""Staged runners: the training layer's hook for methods trained in several stages.

A method whose class sets ``runner = "<name>"`` in the method contract
(:class:`lesionsweep.methods.base.Method`) is not trained by the trainer's single loop:
:func:`lesionsweep.training.run_training` hands the run to the :class:`StagedRunner` registered
here under that name, and :func:`lesionsweep.training.evaluate` evaluates its run folders through
the same runner. A runner reuses the trainer's pieces (optimizers, loaders, checkpoints, the
epoch reports and the localization suite); it owns only the order of its stages and what passes
between them. The WSMIS pipeline (:mod:`lesionsweep.training.wsmis`) is the one shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..data.types import SplitDataset
from ..errors import ConfigError
from .reports import EpochReport, TrainResult

__all__ = ["StagedRunner", "register_runner", "runner_for"]


class StagedRunner(Protocol):
    """What a staged runner provides (class-level entry points)."""

    @classmethod
    def run_pipeline(
        cls,
        cfg: RunConfig,
        out_dir: Path,
        reporter: Callable[[EpochReport], None] | None = None,
        resume: bool = True,
        *,
        datasets: tuple[SplitDataset, SplitDataset, SplitDataset | None] | None = None,
        progress: bool = False,
    ) -> TrainResult:
        """Run every stage of ``cfg`` into ``out_dir``; report after every epoch of every stage."""
        ...

    @staticmethod
    def evaluate_run(
        run_dir: str | Path,
        cfg: RunConfig,
        split: str,
        *,
        batch_size: int | None = None,
        device: str = "auto",
        which: str = "best",
    ) -> dict[str, float]:
        """Evaluate a finished run folder once on ``split``: ``{"<split>/<key>": value}``."""
        ...


_RUNNERS: dict[str, StagedRunner] = {}


def register_runner(name: str, runner: StagedRunner) -> None:
    """Register ``runner`` for methods declaring ``runner = name``; a name is taken once."""
    if name in _RUNNERS and _RUNNERS[name] is not runner:
        raise ValueError(f"a staged runner named {name!r} is already registered")
    _RUNNERS[name] = runner


def runner_for(method_cls: type[Any]) -> StagedRunner | None:
    """The staged runner a method class declares (``None``: the trainer's own loop).

    Raises:
        ConfigError: the class names a runner the training layer does not have.
    """
    name = getattr(method_cls, "runner", None)
    if name is None:
        return None
    try:
        return _RUNNERS[name]
    except KeyError:
        known = ", ".join(sorted(_RUNNERS)) or "none"
        raise ConfigError(
            f"method {getattr(method_cls, 'name', method_cls.__name__)!r} declares the staged "
            f"runner {name!r}, which the training layer does not have (known: {known})"
        ) from None
