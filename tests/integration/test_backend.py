"""The Ray-facing pieces driven directly (no cluster): the ASHA -> Optuna PRUNED fix, ASHA rung
persistence across a restore, and the sampler factory."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from lesionsweep.errors import ConfigError
from lesionsweep.sweep import backend
from lesionsweep.sweep.results import EpochRecord, TrialRecord
from lesionsweep.sweep.spaces import SpaceSet, space_from_dict
from lesionsweep.sweep.spec import load_spec
from lesionsweep.sweep.store import ResultsStore, write_epoch_fragment
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

pytestmark = pytest.mark.ray

SPACES = SpaceSet(
    (space_from_dict({"name": "s", "parameters": {"optim.lr": {"float": [1e-4, 1e-2]}}}),)
)


def _ctx(tmp_path: Path, name: str = "sw") -> backend.SweepContext:
    spec = load_spec(None, {"storage": str(tmp_path), "name": name})
    return backend.SweepContext(spec=spec, root=str(tmp_path / name), progress=False)


def _searcher(cls: type, ctx: backend.SweepContext) -> OptunaSearch:
    kw = dict(
        space=backend.DefineByRun(SPACES),
        metric="m",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return cls(ctx, **kw) if cls is backend.SweepSearcher else cls(**kw)


def _asha(ctx: backend.SweepContext, max_t: int = 4) -> backend.PersistentASHA:
    return backend.PersistentASHA(ctx, "m", "max", max_t=max_t, grace_period=1, reduction_factor=2)


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
    ctx = _ctx(tmp_path, "a")
    ours = _searcher(backend.SweepSearcher, ctx)
    sched = _asha(ctx)
    assert _drive(ours, sched, "t1", [0.9, 0.9, 0.9, 0.9]) == "finished"
    assert _drive(ours, sched, "t2", [0.1, 0.1]) == "stopped"
    assert ctx.pruned == {"t2"}
    assert _states(ours) == ["COMPLETE", "PRUNED"]
    pruned = ours._ot_study.trials[1]
    assert pruned.intermediate_values == {1: 0.1}  # the stopping result reached Optuna too
    # stock OptunaSearch records the same stopped trial as COMPLETE with its partial score
    ctx2 = _ctx(tmp_path, "b")
    stock = _searcher(OptunaSearch, ctx2)
    sched2 = _asha(ctx2)
    _drive(stock, sched2, "t1", [0.9, 0.9, 0.9, 0.9])
    _drive(stock, sched2, "t2", [0.1, 0.1])
    assert _states(stock) == ["COMPLETE", "COMPLETE"]
    assert stock._ot_study.trials[1].value == 0.1


def test_study_is_durable_and_a_resume_settles_lost_trials(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    s = _searcher(backend.SweepSearcher, ctx)
    sched = _asha(ctx)
    _drive(s, sched, "t1", [0.9, 0.9, 0.9, 0.9])
    _drive(s, sched, "t2", [0.1, 0.1])
    s.suggest("t3")  # running when Tune saved its state
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("t4")  # asked after the last save: lost with the killed driver
    journal = tmp_path / "sw" / backend.JOURNAL_FILE
    assert journal.is_file()
    # what optuna-dashboard opens: a plain JournalStorage on the file
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(study_name="sw", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "RUNNING", "RUNNING"]
    # a new driver: fresh pieces bound to the folder, Tune's small searcher state restored
    ctx2 = _ctx(tmp_path)
    fresh = _searcher(backend.SweepSearcher, ctx2)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.settle({"t1", "t2", "t3"}) == 1
    assert [t.state.name for t in fresh.study().trials] == ["COMPLETE", "PRUNED", "RUNNING", "FAIL"]
    fresh.on_trial_result("t3", {"m": 0.5, "epoch": 1})
    fresh.on_trial_complete("t3", result={"m": 0.5, "epoch": 4})
    fresh.suggest("t5")
    fresh.on_trial_complete("t5", result={"epoch": 0, "trial_error": "TrainingError: nan"})
    states = [t.state.name for t in optuna.load_study(study_name="sw", storage=storage).trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL", "FAIL"]


def test_lost_trials_that_had_ended_are_told_as_they_ended_and_cap_new_draws(
    tmp_path: Path,
) -> None:
    """Trials asked after Tune's last save that had ended (recorded from their run folders) are
    told Optuna as they ended, not FAIL; the rest FAIL. Tune still counts the recorded ones'
    places, so the searcher draws only the budget's remainder, then answers FINISHED."""
    ctx = _ctx(tmp_path)
    s = _searcher(backend.SweepSearcher, ctx)
    sched = _asha(ctx)
    _drive(s, sched, "t1", [0.9, 0.9, 0.9, 0.9])
    s.save(str(tmp_path / "searcher.pkl"))
    for tid in ("t2", "t3", "t4", "t5", "t6"):
        s.suggest(tid)  # all asked after the last save
    s.on_trial_result("t5", {"m": 0.4, "epoch": 1})
    ended = {
        "t2": ("completed", [0.7], 4),
        "t3": ("pruned", [0.2], 2),
        "t4": ("completed", [float("nan")], 4),  # a non-finite objective: FAIL, as at the end
        "t6": ("stopped", [0.5], 3),  # stopped by the time budget: its last value
    }
    fresh = _searcher(backend.SweepSearcher, _ctx(tmp_path))
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.settle({"t1"}, ended) == 5
    trials = fresh.study().trials
    assert [t.state.name for t in trials] == [
        "COMPLETE", "COMPLETE", "PRUNED", "FAIL", "FAIL", "COMPLETE"
    ]  # fmt: skip
    assert (trials[1].value, trials[5].value) == (0.7, 0.5)
    assert trials[2].intermediate_values == {2: 0.2}
    assert "lesionsweep_settled" in trials[4].user_attrs  # t5: not ended, re-drawn by Tune
    assert "lesionsweep_settled" not in trials[1].user_attrs
    # budget 6: Tune knew 1 trial and asks for 5 more; 4 of those places are taken
    fresh.limit_new(6 - 1 - 4)
    assert isinstance(fresh.suggest("t7"), dict)
    assert fresh.suggest("t8") == Searcher.FINISHED
    assert len(fresh.study().trials) == 7


def test_resume_records_lost_trials_that_finished_and_redraws_the_rest(tmp_path: Path) -> None:
    """The results callback of a new driver, on rows Tune's restored state does not know: a
    trial that had run every epoch (its own epoch fragment says so, its row still "running")
    and one the driver had recorded "completed" keep their rows and run folders; one cut off
    mid-way is dropped and its folder moved to ``lost_runs/``. The searcher is told the kept
    ones' outcomes and draws only what is left of the budget."""
    ctx = _ctx(tmp_path)
    loc = ctx.location
    store = ResultsStore(loc, ctx.spec.name, ctx.spec.spaces.column_types())
    metric = ctx.spec.objective.metric
    for tid, status, epochs in (("a", "completed", 3), ("b", "running", 3), ("c", "running", 1)):
        rows = [
            EpochRecord(tid, "demo", "cam", e, float(e), metrics={metric: 0.5 + e / 10})
            for e in range(1, epochs + 1)
        ]
        write_epoch_fragment(loc, ctx.spec.name, tid, rows)  # as the trial writes it
        rec = TrialRecord(
            trial_id=tid, status=status, space="demo", method="cam", run_dir=f"runs/{tid}",
            config_json=json.dumps({"train": {"epochs": 3}}),
        )  # fmt: skip
        if status == "completed":
            rec.epochs_run, rec.final = epochs, {metric: 0.5 + epochs / 10}
        store.upsert_trial(rec)
        (tmp_path / "sw" / "runs" / tid).mkdir(parents=True)
    searcher = _searcher(backend.SweepSearcher, ctx)
    for tid in ("a", "b", "c"):
        searcher.suggest(tid)  # their Optuna trials, RUNNING: asked after Tune's last save

    cb = backend.ResultsCallback(ctx)
    cb.setup()
    cb.on_step_begin(0, [])  # Tune restored no trial
    assert {t: r.status for t, r in cb.store.trials.items()} == {"a": "completed", "b": "completed"}
    assert cb.store.trials["b"].epochs_run == 3 and cb.store.trials["b"].objective == 0.8
    assert sorted(p.name for p in (tmp_path / "sw" / "runs").iterdir()) == ["a", "b"]
    assert [p.name for p in (tmp_path / "sw" / "lost_runs").iterdir()] == ["c"]
    assert [t.state.name for t in searcher.study().trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    # budget 20, Tune knew none of them: 18 more draws, then FINISHED
    for i in range(18):
        assert isinstance(searcher.suggest(f"n{i}"), dict)
    assert searcher.suggest("n18") == Searcher.FINISHED


def test_object_store_sweep_keeps_its_study_in_the_searcher_state(tmp_path: Path) -> None:
    """A sweep on an object store (no journal file there) without ``searcher.storage`` keeps
    the study in memory and in Tune's searcher state: a new driver restores it from that state
    with every trial, including a PRUNED one and one lost after the save, and TPE (the sweep's
    bounded TPE, pickled with the study) goes on drawing from it."""
    spec = load_spec(None, {"storage": "s3://bucket/sweeps", "name": "sw"})
    assert not spec.location.is_local  # nothing below touches the bucket

    def searcher() -> backend.SweepSearcher:
        ctx = backend.SweepContext(spec=spec, root=spec.location.root, progress=False)
        tpe = backend.RecentTPESampler(seed=0, n_startup_trials=2)
        return backend.SweepSearcher(
            ctx, space=backend.DefineByRun(SPACES), metric="m", mode="max", sampler=tpe
        )

    s = searcher()
    assert isinstance(s.study()._storage, optuna.storages.InMemoryStorage)
    for i, value in enumerate([0.2, 0.9, 0.5]):
        s.suggest(f"t{i}")
        s.on_trial_result(f"t{i}", {"m": value, "epoch": 1})
        if i == 1:
            s.ctx.pruned.add("t1")
        s.on_trial_complete(f"t{i}", result={"m": value, "epoch": 1})
    s.suggest("t3")  # running at the save
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("t4")  # lost with the killed driver
    fresh = searcher()
    fresh.restore(str(tmp_path / "searcher.pkl"))
    states = [t.state.name for t in fresh.study().trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "RUNNING"]
    assert fresh.settle({"t3"}) == 0
    fresh.on_trial_complete("t3", result={"m": 0.7, "epoch": 1})
    assert fresh.suggest("t5") is not None  # TPE (past its startup) on the restored study
    study = fresh.study()
    assert [t.state.name for t in study.trials] == [
        "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "RUNNING"
    ]  # fmt: skip
    assert study.trials[-1].params  # t5, drawn after the restore (t4 was never saved)


def test_recent_tpe_models_a_bounded_history(tmp_path: Path) -> None:
    def study_with(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        st = optuna.create_study(direction="maximize", sampler=sampler)
        st.optimize(lambda t: -((t.suggest_float("x", -5, 5) - 1) ** 2), n_trials=40)
        return st

    # up to max_history finished trials it is exactly Optuna's TPE
    a = study_with(backend.RecentTPESampler(seed=3, max_history=100, n_startup_trials=5))
    b = study_with(optuna.samplers.TPESampler(seed=3, n_startup_trials=5))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    # beyond it: the view holds the last k plus the best ever
    view = backend.RecentTPESampler(max_history=10, n_best=3)._view(a)
    seen = view._get_trials(deepcopy=False, states=None)
    best3 = sorted(a.trials[:-10], key=lambda t: -t.value)[:3]
    assert len(seen) == 13 and {t.number for t in best3} <= {t.number for t in seen}
    assert [t.number for t in seen][-10:] == list(range(30, 40))


def test_recent_view_kept_incrementally_equals_its_definition() -> None:
    """The window is kept incrementally (the older trials and their best are remembered); with
    trials finishing out of order (some long after they started), every call equals the
    definition: the last k finished, the n_best best older COMPLETE ones, every running one."""
    rng = random.Random(0)
    k, n_best = 7, 3
    st = optuna.create_study(direction="minimize")
    sampler = backend.RecentTPESampler(max_history=k, n_best=n_best)
    running: list[optuna.Trial] = []
    for step in range(300):
        if rng.random() < 0.55 or not running:
            running.append(st.ask({"x": optuna.distributions.FloatDistribution(0, 1)}))
        else:  # mostly the oldest, sometimes one that ran long
            t = running.pop(0 if rng.random() < 0.7 else rng.randrange(len(running)))
            for epoch in range(rng.randrange(4)):
                t.report(rng.random(), epoch)
            t.set_user_attr("tune_trial_id", f"t{t.number}")
            if rng.random() < 0.15:
                st.tell(t, state=optuna.trial.TrialState.PRUNED)
            else:
                st.tell(t, round(rng.random(), 2))  # ties are broken by the lower number
        c, p, r = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, _RUNNING)
        states = [None, (c,), (c, p), (c, p, r)][step % 4]  # the last two: from the book
        got = [t.number for t in sampler._view(st)._get_trials(deepcopy=False, states=states)]
        # within one suggest (listed once, shared, slim copies): the same trials
        sampler._shared = None  # a new suggest (the test changes the study between views)
        shared = sampler._view(st, SimpleNamespace(number=len(st.trials) - 1))
        slim = shared._get_trials(deepcopy=False, states=states)
        assert [t.number for t in slim] == got
        assert shared._get_trials(deepcopy=False, states=states) is slim  # made once
        trials = st._get_trials(deepcopy=False, states=states)
        full = {t.number: t for t in trials}
        for t in slim:
            f = full[t.number]
            assert (t.state, t.values, t.params) == (f.state, f.values, f.params)
            assert dict(t.intermediate_values) == (
                dict([max(f.intermediate_values.items())]) if f.intermediate_values else {}
            )
        fin = [t for t in trials if t.state.is_finished()]
        if len(fin) <= k:
            assert got == [t.number for t in trials]
            continue
        old = [t for t in fin[:-k] if t.state == optuna.trial.TrialState.COMPLETE]
        best = sorted(old, key=lambda t: (t.value, t.number))[:n_best]
        keep = {t.number for t in fin[-k:]} | {t.number for t in best}
        want = sorted(keep) + [t.number for t in trials if not t.state.is_finished()]
        assert got == want, step


def test_journal_ask_skips_the_waiting_scan_until_a_trial_is_enqueued(tmp_path: Path) -> None:
    spec = load_spec(None, {"storage": str(tmp_path), "name": "sw"})
    storage = backend.build_storage(spec, str(tmp_path / "sw"))
    st = optuna.create_study(storage=storage, study_name="sw")
    x = optuna.distributions.FloatDistribution(0, 1)
    for _ in range(3):
        st.tell(st.ask({"x": x}), 0.5)
    st.enqueue_trial({"x": 0.25})  # after scans that found none
    assert st.ask({"x": x}).params == {"x": 0.25}
    again = optuna.load_study(
        storage=backend.build_storage(spec, str(tmp_path / "sw")), study_name="sw"
    )
    again.enqueue_trial({"x": 0.75})
    fresh = optuna.load_study(
        storage=backend.build_storage(spec, str(tmp_path / "sw")), study_name="sw"
    )
    assert fresh.ask({"x": x}).params == {"x": 0.75}  # a WAITING trial in the journal it read


def test_grouped_tpe_adds_each_trial_once_and_draws_exactly_as_optuna(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a conditional space (multivariate + group TPE) the search-space groups are built
    incrementally: each finished trial is added once, not at every suggest (Optuna re-adds
    them all: O(trials) per suggest), and the draws are exactly Optuna's."""

    def objective(t: optuna.Trial) -> float:
        kind = t.suggest_categorical("kind", ["a", "b", "c"])
        x = t.suggest_float("x", -5, 5)
        if kind == "a":
            y = t.suggest_float("ya", 0, 1)
        elif kind == "b":
            y = t.suggest_int("yb", 1, 9) / 10
        else:
            y = 0.0
        for step in range(1, 4):  # TPE ranks pruned trials by their last step's value
            t.report(-abs(x - step), step)
        t.set_user_attr("tune_trial_id", f"t{t.number}")
        if x > -4:  # most trials end pruned (as under ASHA): TPE's good group takes some
            raise optuna.TrialPruned()
        return -((x - 1) ** 2) + y

    opts = dict(seed=5, multivariate=True, group=True, n_startup_trials=6)
    calls = 0
    real = optuna.search_space.group_decomposed._SearchSpaceGroup.add_distributions

    def counting(self: object, d: dict[str, object]) -> None:
        nonlocal calls
        calls += 1
        real(self, d)  # type: ignore[arg-type]

    studies = []
    for sampler in (backend.RecentTPESampler(**opts), optuna.samplers.TPESampler(**opts)):
        calls = 0
        with monkeypatch.context() as m:
            m.setattr(
                optuna.search_space.group_decomposed._SearchSpaceGroup,
                "add_distributions",
                counting,
            )
            st = optuna.create_study(direction="maximize", sampler=sampler)
            st.optimize(objective, n_trials=60)
        studies.append((st, calls))
    (ours, our_calls), (optunas, optuna_calls) = studies
    assert [t.params for t in ours.trials] == [t.params for t in optunas.trials]
    assert {t.state for t in ours.trials} >= {optuna.trial.TrialState.PRUNED}
    assert our_calls <= len(ours.trials) < optuna_calls  # once per finished trial
    # the list of trials shared within one suggest is not pickled with the sampler
    assert ours.sampler._shared is not None
    assert pickle.loads(pickle.dumps(ours.sampler))._shared is None


@pytest.mark.parametrize("constant_liar", [True, False])
def test_tpe_with_trials_in_flight_draws_exactly_as_optuna(constant_liar: bool) -> None:
    """As in a parallel sweep: several trials run while the next is asked, finish out of order,
    most pruned after reporting. Optuna 5's TPE models running trials (constant liar, its
    default) without the trial being sampled; the good/bad split is made once per suggest and
    shared by the groups. The draws are exactly Optuna's, with and without the liar."""
    draws = []
    for cls in (backend.RecentTPESampler, optuna.samplers.TPESampler):
        sampler = cls(
            seed=2, multivariate=True, group=True, n_startup_trials=5, constant_liar=constant_liar
        )
        st = optuna.create_study(direction="maximize", sampler=sampler)
        rng = random.Random(0)
        running: list[tuple[optuna.Trial, float]] = []
        for _ in range(70):
            t = st.ask()
            x = t.suggest_float("x", -5, 5)
            kind = t.suggest_categorical("kind", ["a", "b"])
            y = t.suggest_float("ya", 0, 1) if kind == "a" else t.suggest_int("yb", 1, 9) / 10
            running.append((t, -((x - 1) ** 2) + y))
            if len(running) > 4:
                done, value = running.pop(rng.randrange(len(running)))
                for step in range(1, rng.randrange(2, 5)):
                    done.report(value - step, step)
                pruned = rng.random() < 0.7
                st.tell(done, None if pruned else value, state=_PRUNED if pruned else None)
        draws.append([t.params for t in st.trials])
    assert draws[0] == draws[1]


_PRUNED = optuna.trial.TrialState.PRUNED
_RUNNING = optuna.trial.TrialState.RUNNING


def test_trial_reaching_its_last_epoch_is_not_pruned(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    s = _searcher(backend.SweepSearcher, ctx)
    sched = _asha(ctx, max_t=2)
    _drive(s, sched, "t1", [0.9, 0.9])
    # t2 is worse at the final rung (epoch 2 == its last epoch): finished, not pruned
    trial = Trial("x", trial_id="t2", config={}, stub=True)
    s.suggest("t2")
    sched.on_trial_add(None, trial)
    sched.on_trial_result(None, trial, {"m": 0.95, "epoch": 1, "epochs_total": 2})
    sched.on_trial_result(None, trial, {"m": 0.1, "epoch": 2, "epochs_total": 2})
    assert "t2" not in ctx.pruned


def test_rungs_and_pruned_trials_survive_a_restore(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    s = _searcher(backend.SweepSearcher, ctx)
    sched = _asha(ctx)
    _drive(s, sched, "t1", [0.9, 0.9, 0.9, 0.9])
    _drive(s, sched, "t2", [0.1])
    assert (tmp_path / "sw" / backend.ASHA_STATE_FILE).is_file()
    # a new driver process: a new context, a fresh scheduler
    ctx2 = _ctx(tmp_path)
    fresh = _asha(ctx2)
    t3 = Trial("x", trial_id="t3", config={}, stub=True)
    fresh.on_trial_add(None, t3)
    assert ctx2.pruned == {"t2"}
    # rung at epoch 1 holds {t1: 0.9, t2: 0.1}: cutoff 0.5
    assert fresh.on_trial_result(None, t3, {"m": 0.4, "epoch": 1, "epochs_total": 4}) == "STOP"
    # a pruned trial resumed after the restore is stopped again at its first result
    t2 = Trial("x", trial_id="t2", config={}, stub=True)
    fresh.on_trial_add(None, t2)
    assert fresh.on_trial_result(None, t2, {"m": 0.99, "epoch": 2, "epochs_total": 4}) == "STOP"
    # without the persisted rungs the same result would continue
    empty = _asha(_ctx(tmp_path, "new"))
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


def test_rdb_storage_from_the_spec(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = load_spec(
        None, {"storage": str(tmp_path), "name": "db", "searcher": {"name": "tpe", "storage": url}}
    )
    ctx = backend.SweepContext(spec=spec, root=str(tmp_path / "db"), progress=False)
    s = backend.SweepSearcher(
        ctx, space=backend.DefineByRun(SPACES), metric="m", mode="max",
        sampler=backend.build_sampler(spec),
    )  # fmt: skip
    s.suggest("t1")
    s.on_trial_complete("t1", result={"m": 0.5, "epoch": 1})
    assert not (tmp_path / "db" / backend.JOURNAL_FILE).exists()
    study = optuna.load_study(study_name="db", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    bad = load_spec(
        None, {"storage": str(tmp_path), "searcher": {"name": "tpe", "storage": "nope://x"}}
    )
    with pytest.raises(ConfigError, match="searcher.storage"):
        backend.build_storage(bad, str(tmp_path / "x"))
