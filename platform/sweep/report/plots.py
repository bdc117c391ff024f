"""The report's figures: Optuna's plotly visualizations of the in-memory study.

Each function returns a plotly figure, or a one-line note when the sweep cannot support the plot
(too few completed trials, a single objective for a Pareto front...). Nothing here draws by hand
what :mod:`optuna.visualization` draws; the one added figure is the search-efficiency curve
(best-so-far objective against epochs spent), a plotly line built from ``epochs.parquet``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go

from .data import SweepData, best_so_far

__all__ = [
    "history_figure",
    "efficiency_figure",
    "parallel_figure",
    "importance_figure",
    "curves_figure",
    "pareto_figure",
    "Figure",
]

Figure: TypeAlias = "go.Figure | str"  # a figure, or a note saying why there is none


def _target(study: optuna.Study) -> Callable[[optuna.trial.FrozenTrial], float] | None:
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def history_figure(study: optuna.Study, data: SweepData) -> Figure:
    """Objective per completed trial and the best so far (``plot_optimization_history``)."""
    if not _complete(study):
        return "no completed trial yet"
    return vis.plot_optimization_history(study, target=_target(study), target_name=data.metric)


def efficiency_figure(data: SweepData) -> Figure:
    """Best final objective so far against epochs spent by the whole sweep
    (:func:`~lesionsweep.sweep.report.data.best_so_far`): the curve of ``bench_search.py``."""
    xs, ys = best_so_far(data)
    if not xs:
        return "no completed trial yet"
    total = len(data.epochs)
    xs, ys = [*xs, max(total, xs[-1])], [*ys, ys[-1]]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name="best"))
    fig.update_layout(
        title="Search efficiency: best final objective against epochs spent (all trials)",
        xaxis_title="epochs spent (sum over trials, pruned ones included)",
        yaxis_title=data.metric,
    )
    return fig


def parallel_figure(study: optuna.Study, data: SweepData) -> Figure:
    """Parameters against the objective (``plot_parallel_coordinate``)."""
    if len(_complete(study)) < 2:
        return "needs at least 2 completed trials"
    return vis.plot_parallel_coordinate(study, target=_target(study), target_name=data.metric)


def importance_figure(study: optuna.Study, data: SweepData) -> Figure:
    """fANOVA parameter importances (``plot_param_importances``; parameters every completed
    trial has)."""
    done = _complete(study)
    if len(done) < 3:
        return "needs at least 3 completed trials"
    try:
        return vis.plot_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=_target(study),
            target_name=data.metric,
        )
    except (ValueError, RuntimeError) as e:
        return f"not computable for this sweep: {e}"


def curves_figure(study: optuna.Study, data: SweepData) -> Figure:
    """Per-epoch objective of every trial (``plot_intermediate_values``); pruned trials are
    drawn dotted and named ``(pruned)``."""
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        return "no epoch reported yet"
    fig = vis.plot_intermediate_values(study)
    status = {f"Trial{t.number}": t.user_attrs.get("status", "") for t in study.trials}
    ids = {f"Trial{t.number}": t.user_attrs.get("trial_id", "") for t in study.trials}
    for tr in fig.data:
        name = str(getattr(tr, "name", ""))
        if name not in status:
            continue
        st = status[name]
        tr.name = f"{ids[name]} ({st})"
        if st in ("pruned", "stopped"):
            tr.update(line={"dash": "dot"}, marker={"symbol": "x"})
    fig.update_layout(yaxis_title=data.metric, xaxis_title="epoch")
    return fig


def pareto_figure(study: optuna.Study, data: SweepData) -> Figure:
    """Pareto front of a multi-objective sweep (``plot_pareto_front``)."""
    if len(study.directions) < 2:
        return f"single-objective sweep ({data.metric}): no Pareto front"
    if not _complete(study):
        return "no completed trial yet"
    kw: dict[str, Any] = {"target_names": list(data.metrics)}
    if len(study.directions) > 3:
        kw["targets"] = lambda t: t.values[:3]
        kw["target_names"] = list(data.metrics[:3])
    return vis.plot_pareto_front(study, **kw)
