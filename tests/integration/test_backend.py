"""The Ray-facing pieces driven directly (no cluster): the ASHA -> Optuna PRUNED fix, ASHA rung
persistence across a restore, and the sampler factory."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from lesionsweep.errors import ConfigError
from lesionsweep.sweep import backend
from lesionsweep.sweep.spaces import SpaceSet, space_from_dict
from lesionsweep.sweep.spec import load_spec
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

pytestmark = pytest.mark.ray

SPACES = SpaceSet(
    (space_from_dict({"name": "s", "parameters": {"optim.lr": {"float": [1e-4, 1e-2]}}}),)
)


def _searcher(cls: type, root: str) -> OptunaSearch:
    kw = dict(
        space=backend.DefineByRun(SPACES),
        metric="m",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return cls(root, **kw) if cls is backend.SweepSearcher else cls(**kw)


def _drive(
    searcher: OptunaSearch, sched: backend.PersistentASHA, tid: str, values: list[float]
) -> str:
    """Feed one trial's epochs through scheduler then searcher, as Tune's controller does."""
    trial = Trial("x", trial_id=tid, config={}, stub=True)
    searcher.suggest(tid)
    sched.on_trial_add(None, trial)
    result: dict = {}
    for epoch, v in enumerate(values, start=1):
        result = {"m": v, "epoch": epoch, "epochs_total": 4, "training_iteration": epoch}
        decision = sched.on_trial_result(None, trial, result)
        if decision == TrialScheduler.STOP:
            searcher.on_trial_complete(tid, result=result)
            return "stopped"
        searcher.on_trial_result(tid, result)
    sched.on_trial_complete(None, trial, result)
    searcher.on_trial_complete(tid, result=result)
    return "finished"


def _states(searcher: OptunaSearch) -> list[str]:
    return [t.state.name for t in searcher._ot_study.trials]


def test_asha_stopped_trials_reach_optuna_as_pruned(tmp_path: Path) -> None:
    root = str(tmp_path / "a")
    backend.pruned_trials(root).clear()
    ours = _searcher(backend.SweepSearcher, root)
    sched = backend.PersistentASHA(root, "m", "max", max_t=4, grace_period=1, reduction_factor=2)
    assert _drive(ours, sched, "t1", [0.9, 0.9, 0.9, 0.9]) == "finished"
    assert _drive(ours, sched, "t2", [0.1, 0.1]) == "stopped"
    assert backend.pruned_trials(root) == {"t2"}
    assert _states(ours) == ["COMPLETE", "PRUNED"]
    pruned = ours._ot_study.trials[1]
    assert pruned.intermediate_values == {1: 0.1}  # the stopping result reached Optuna too
    # stock OptunaSearch records the same stopped trial as COMPLETE with its partial score
    root2 = str(tmp_path / "b")
    stock = _searcher(OptunaSearch, root2)
    sched2 = backend.PersistentASHA(root2, "m", "max", max_t=4, grace_period=1, reduction_factor=2)
    _drive(stock, sched2, "t1", [0.9, 0.9, 0.9, 0.9])
    _drive(stock, sched2, "t2", [0.1, 0.1])
    assert _states(stock) == ["COMPLETE", "COMPLETE"]
    assert stock._ot_study.trials[1].value == 0.1


def test_trial_reaching_its_last_epoch_is_not_pruned(tmp_path: Path) -> None:
    root = str(tmp_path)
    backend.pruned_trials(root).clear()
    s = _searcher(backend.SweepSearcher, root)
    sched = backend.PersistentASHA(root, "m", "max", max_t=2, grace_period=1, reduction_factor=2)
    _drive(s, sched, "t1", [0.9, 0.9])
    # t2 is worse at the final rung (epoch 2 == its last epoch): finished, not pruned
    trial = Trial("x", trial_id="t2", config={}, stub=True)
    s.suggest("t2")
    sched.on_trial_add(None, trial)
    sched.on_trial_result(None, trial, {"m": 0.95, "epoch": 1, "epochs_total": 2})
    sched.on_trial_result(None, trial, {"m": 0.1, "epoch": 2, "epochs_total": 2})
    assert "t2" not in backend.pruned_trials(root)


def test_rungs_and_pruned_trials_survive_a_restore(tmp_path: Path) -> None:
    root = str(tmp_path)
    backend.pruned_trials(root).clear()
    s = _searcher(backend.SweepSearcher, root)
    sched = backend.PersistentASHA(root, "m", "max", max_t=4, grace_period=1, reduction_factor=2)
    _drive(s, sched, "t1", [0.9, 0.9, 0.9, 0.9])
    _drive(s, sched, "t2", [0.1])
    assert (tmp_path / backend.ASHA_STATE_FILE).is_file()
    # a new driver process: empty ledger, a fresh scheduler (as Tuner.restore unpickles it)
    backend._PRUNED.clear()
    fresh = backend.PersistentASHA(root, "m", "max", max_t=4, grace_period=1, reduction_factor=2)
    t3 = Trial("x", trial_id="t3", config={}, stub=True)
    fresh.on_trial_add(None, t3)
    assert backend.pruned_trials(root) == {"t2"}
    # rung at epoch 1 holds {t1: 0.9, t2: 0.1}: cutoff 0.5
    assert fresh.on_trial_result(None, t3, {"m": 0.4, "epoch": 1, "epochs_total": 4}) == "STOP"
    # a pruned trial resumed after the restore is stopped again at its first result
    t2 = Trial("x", trial_id="t2", config={}, stub=True)
    fresh.on_trial_add(None, t2)
    assert fresh.on_trial_result(None, t2, {"m": 0.99, "epoch": 2, "epochs_total": 4}) == "STOP"
    # without the persisted rungs the same result would continue
    empty = backend.PersistentASHA(str(tmp_path / "new"), "m", "max", max_t=4)
    empty.on_trial_add(None, t3)
    assert empty.on_trial_result(None, t3, {"m": 0.4, "epoch": 1, "epochs_total": 4}) == "CONTINUE"


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "gp", "nsga2", "qmc"])
def test_samplers(tmp_path: Path, name: str) -> None:
    ov = {"searcher": name, "storage": str(tmp_path)}
    if name == "grid":
        ov["spaces"] = [{"name": "g", "parameters": {"method.pooling": {"choice": ["gap", "lse"]}}}]
    sampler = backend.build_sampler(load_spec(None, ov))
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    if name == "tpe":  # the demo space is conditional
        assert sampler._multivariate and sampler._group


def test_sampler_option_errors(tmp_path: Path) -> None:
    # an unknown sampler option fails when the spec is loaded, before anything starts
    with pytest.raises(ConfigError, match=r"searcher.n_startup.*n_startup_trials"):
        load_spec(None, {"searcher": {"name": "tpe", "n_startup": 3}, "storage": str(tmp_path)})
    try:
        import cmaes  # noqa: F401
    except ImportError:
        spec = load_spec(
            None,
            {
                "searcher": "cmaes",
                "spaces": [{"name": "c", "parameters": {"optim.lr": {"float": [1e-4, 1e-2]}}}],
                "storage": str(tmp_path),
            },
        )
        with pytest.raises(ConfigError, match="pip install cmaes"):
            backend.build_sampler(spec)
