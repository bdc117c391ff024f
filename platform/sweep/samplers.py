"""The Optuna samplers a sweep spec may name as its ``searcher``, in one registry.

``SAMPLERS`` maps the spec's names to Optuna's sampler classes; its :meth:`Registry.params` are
the options a spec may give (``searcher: {name: tpe, n_startup_trials: 5}``), so an unknown
option fails when the spec is loaded, before anything starts. ``seed`` (the spec's top-level
``seed``) and ``search_space`` (built from the spaces for ``grid``) are supplied by the sweep.
"""

from __future__ import annotations

import optuna
from lesionsweep.methods.registry import Registry

__all__ = ["SAMPLERS", "MULTI_OBJECTIVE", "OWN_OPTIONS", "searcher_options"]

#: spec name -> Optuna sampler class
SAMPLERS: Registry[optuna.samplers.BaseSampler] = Registry(
    "searcher", base=optuna.samplers.BaseSampler, reserved=("seed", "search_space")
)
SAMPLERS.add("tpe", optuna.samplers.TPESampler)
SAMPLERS.add("random", optuna.samplers.RandomSampler)
SAMPLERS.add("grid", optuna.samplers.GridSampler)
SAMPLERS.add("cmaes", optuna.samplers.CmaEsSampler)
SAMPLERS.add("gp", optuna.samplers.GPSampler)
SAMPLERS.add("nsga2", optuna.samplers.NSGAIISampler)
SAMPLERS.add("qmc", optuna.samplers.QMCSampler)

#: searcher options that are the sweep's, not the sampler constructor's: the study's storage
#: (any sampler) and the bounded history of the TPE the sweep runs (``RecentTPESampler``)
OWN_OPTIONS: dict[str, tuple[str, ...]] = {"*": ("storage",), "tpe": ("max_history", "n_best")}


def searcher_options(name: str) -> list[str]:
    """Every option a spec's ``searcher: {name: <name>, ...}`` may give."""
    return sorted([*SAMPLERS.params(name), *OWN_OPTIONS["*"], *OWN_OPTIONS.get(name, ())])


#: the samplers that handle several objectives (a Pareto front)
MULTI_OBJECTIVE = ("tpe", "random", "grid", "gp", "nsga2", "qmc")
