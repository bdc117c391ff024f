"""The searcher: Ray's ``OptunaSearch`` over a durable Optuna study, with a bounded-cost TPE.

* The study lives in Optuna's ``JournalStorage`` file ``<sweep>/optuna.journal`` (or the RDB URL
  of ``searcher.storage``), named after the sweep: every trial's state is there, PRUNED
  included, and ``optuna-dashboard <sweep>/optuna.journal`` opens it as is.
* Tune's searcher checkpoint holds only ``{trial id: Optuna trial id}``; on resume the study is
  reloaded from the storage of the sweep folder being resumed (never a path from a pickle), and
  trials a killed driver left RUNNING that Tune no longer knows are told FAIL.
* TPE's suggest cost grows with the study's history (14 ms at 110 trials, 149 ms at 3,000).
  :class:`RecentTPESampler` models at most ``max_history`` finished trials: the most recent ones
  plus the best ``n_best`` ever (so the good group keeps the best configs ever seen), which
  bounds the cost per suggest. Up to ``max_history`` trials it is exactly Optuna's TPE.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ...errors import ConfigError
from ..samplers import OWN_OPTIONS, SAMPLERS
from ..spaces import SpaceSet
from ..spec import SweepSpec
from ..storage import SweepLocation
from .context import JOURNAL_FILE, SweepContext
from .tpe import RecentTPESampler

__all__ = [
    "SPACE_KEY",
    "PARAMS_KEY",
    "build_sampler",
    "build_storage",
    "RecentTPESampler",
    "DefineByRun",
    "SweepSearcher",
    "Outcome",
]

log = logging.getLogger("lesionsweep.sweep")

#: keys of the trial config (the flat params live under PARAMS_KEY)
SPACE_KEY = "_space"
PARAMS_KEY = "_params"

#: how a trial Tune lost with a killed driver had ended: its row's status, its objective
#: value(s) at the end (None where missing) and its last epoch (see ``SweepSearcher.settle``)
Outcome = tuple[str, list[float | None], int]


def build_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The spec's Optuna sampler, seeded with the spec's seed.

    TPE is :class:`RecentTPESampler`. On a conditional space (``when`` or several spaces) of a
    single-objective sweep it gets ``multivariate=True, group=True`` unless the spec says
    otherwise, so that it models the parameters that co-occur together.

    Raises:
        ConfigError: an option the sampler does not take, or a missing optional dependency.
    """
    name = spec.searcher.name
    cls: Any = RecentTPESampler if name == "tpe" else SAMPLERS.get(name)
    opts: dict[str, Any] = {
        k: v for k, v in spec.searcher.options.items() if k not in OWN_OPTIONS["*"]
    }
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401 - optional dependency of CmaEsSampler
        except ImportError:
            raise ConfigError(
                f"{spec.source}: searcher cmaes needs the `cmaes` package (pip install cmaes)"
            ) from None
    if name == "grid":
        opts["search_space"] = spec.spaces.grid()
    conditional = len(spec.spaces.spaces) > 1 or any(
        p.when for s in spec.spaces.spaces for p in s.params
    )
    if name == "tpe" and conditional and not spec.objective.multi:
        opts.setdefault("multivariate", True)
        opts.setdefault("group", True)
    params = dict(inspect.signature(cls).parameters)
    if cls is RecentTPESampler:
        params.update(inspect.signature(optuna.samplers.TPESampler).parameters)
        params.pop("kwargs", None)
    bad = sorted(k for k in opts if k not in params)
    if bad:
        allowed = sorted(k for k in params if k not in ("seed", "search_space"))
        raise ConfigError(
            f"{spec.source}: searcher.{bad[0]}: not an option of optuna's {cls.__name__}; "
            f"allowed: {', '.join(allowed + list(OWN_OPTIONS['*']))}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(seed=spec.seed, **opts)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{spec.source}: searcher {name}: {e}") from None


def build_storage(spec: SweepSpec, root: str) -> optuna.storages.BaseStorage:
    """The study's storage: ``searcher.storage`` (an RDB URL) or the sweep's journal file.

    An object-store sweep without ``searcher.storage`` keeps the study in memory (saved with
    Tune's searcher state).
    """
    url = spec.searcher.options.get("storage")
    if url:
        try:
            return optuna.storages.RDBStorage(str(url))
        except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL
            raise ConfigError(f"{spec.source}: searcher.storage: {url!r}: {e}") from None
    loc = SweepLocation(root)
    if not loc.is_local:
        return optuna.storages.InMemoryStorage()
    loc.makedirs()
    return _SweepJournal(_JournalFile(loc.join(JOURNAL_FILE)))


class _SweepJournal(JournalStorage):
    """Optuna's journal storage whose ``ask`` does not scan every trial for a WAITING one.

    ``Study.ask`` lists the study's WAITING (enqueued) trials first: O(trials) per suggest.
    Only ``enqueue_trial`` (a WAITING template to ``create_new_trial``) makes one, so once a
    scan found none, the answer stays "none" until this storage is asked to create one. The
    sweep's driver is the journal's only writer.
    """

    def __init__(self, backend: JournalFileBackend) -> None:
        super().__init__(backend)
        self._no_waiting = False

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        if template_trial is not None and template_trial.state == TrialState.WAITING:
            self._no_waiting = False
        return super().create_new_trial(study_id, template_trial)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Any = None
    ) -> list[optuna.trial.FrozenTrial]:
        waiting_only = isinstance(states, tuple) and states == (TrialState.WAITING,)
        if waiting_only and self._no_waiting:
            return []
        trials = super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        if waiting_only:
            self._no_waiting = not trials
        return trials


class _JournalFile(JournalFileBackend):
    """Optuna's journal file without an fsync per record (7 ms each on a busy disk, 20+ per
    trial). Each record is still appended whole under Optuna's lock and written to the OS before
    returning, so a killed driver loses nothing; only a machine crash may lose the last ones."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with get_lock_file(self._lock):
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))


class DefineByRun:
    """The Optuna define-by-run function: draws ``(space, params)`` for one trial.

    Returns ``{SPACE_KEY: name, PARAMS_KEY: {key: value}}``; Ray merges it with the raw Optuna
    parameters into the trial config.
    """

    def __init__(self, spaces: SpaceSet) -> None:
        self.spaces = spaces

    def __call__(self, trial: Any) -> dict[str, Any]:
        name, params = self.spaces.sample(trial, number=trial.number)
        return {SPACE_KEY: name, PARAMS_KEY: params}


class SweepSearcher(OptunaSearch):
    """``OptunaSearch`` over the sweep's durable study that tells Optuna the truth.

    * Intermediate values are reported at step ``result["epoch"]``.
    * A trial ASHA stopped (``ctx.pruned``) is told ``PRUNED``; a trial that ended with a
      deterministic failure (``trial_error`` in its last result) is told ``FAIL``.

    Args:
        ctx: the driver run's context (not pickled).
        **kwargs: passed to ``OptunaSearch`` (``storage`` and ``study_name`` are set here).
    """

    def __init__(self, ctx: SweepContext, **kwargs: Any) -> None:
        self.ctx = ctx
        ctx.searcher = self
        self._new_left: int | None = None  # see limit_new
        kwargs.setdefault("storage", build_storage(ctx.spec, ctx.root))
        kwargs.setdefault("study_name", ctx.spec.name)
        super().__init__(**kwargs)
        self._publish()

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ctx"] = None  # bound again by the driver of each run
        return d

    def _publish(self) -> None:
        if getattr(self, "_ot_study", None) is not None:
            self.ctx.study = self._ot_study

    # ------------------------------------------------------------------ checkpoint
    def save(self, checkpoint_path: str) -> None:
        """Only the Tune → Optuna trial mapping (the study itself is in its storage)."""
        import pickle

        state: dict[str, Any] = {
            "version": 2,
            "ot_trials": {tid: t._trial_id for tid, t in self._ot_trials.items()},
            "completed": sorted(self._completed_trials),
        }
        if isinstance(self._storage, optuna.storages.InMemoryStorage):
            state["study"] = self._ot_study  # object-store sweep: no durable storage
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if not isinstance(state, dict) or state.get("version") != 2:
            log.warning("ignoring a searcher state of an older lesionsweep: %s", checkpoint_path)
            return
        if "study" in state:
            self._ot_study = state["study"]
            self._publish()
        study = self._ot_study
        assert study is not None  # set up before Tune restores the searcher
        self._ot_trials = {
            tid: optuna.Trial(study, int(otid)) for tid, otid in state["ot_trials"].items()
        }
        self._completed_trials = set(state["completed"])
        by_id = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
        for tid, ot in self._ot_trials.items():
            frozen = by_id.get(ot._trial_id)
            if frozen is not None and frozen.state.is_finished():
                self._completed_trials.add(tid)  # told after Tune's last state save

    def settle(self, known: set[str], ended: Mapping[str, Outcome] | None = None) -> int:
        """Settle every RUNNING study trial that no live Tune trial holds (a killed driver asked
        it after Tune's last state save): told as it ended if its Tune trial id is in ``ended``
        (recorded from its run folder), else FAIL (Tune re-draws it). Returns how many."""
        study = self._ot_study
        assert study is not None  # set up before the driver settles lost trials
        ended = ended or {}
        held = {t._trial_id for tid, t in self._ot_trials.items() if tid in known}
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id in held:
                continue
            outcome = ended.get(str(t.user_attrs.get("tune_trial_id")))
            try:
                if outcome is None:
                    study._storage.set_trial_user_attr(
                        t._trial_id, "lesionsweep_settled", "lost with a killed driver"
                    )
                    study.tell(t.number, state=TrialState.FAIL)
                else:
                    self._tell_outcome(optuna.Trial(study, t._trial_id), outcome)
            except Exception as e:  # noqa: BLE001 - e.g. finished meanwhile
                log.warning("could not settle Optuna trial %d: %s", t.number, e)
                continue
            n += 1
        return n

    @staticmethod
    def _tell_outcome(trial: optuna.Trial, outcome: Outcome) -> None:
        """Tell ``trial`` how it ended, as :meth:`on_trial_complete` would have."""
        study = trial.study
        status, values, epoch = outcome
        ok = all(v is not None and math.isfinite(v) for v in values)
        if status == "failed" or not ok:
            study.tell(trial, state=TrialState.FAIL)
        elif status == "pruned":
            if len(values) == 1 and epoch >= 1:
                trial.report(float(values[0]), epoch)  # type: ignore[arg-type]
            study.tell(trial, state=TrialState.PRUNED)
        else:  # completed, or stopped (by the time budget): told its values, as Tune's end
            study.tell(trial, [float(v) for v in values])  # type: ignore[arg-type]

    def limit_new(self, n: int) -> None:
        """Draw at most ``n`` more trials in this driver run, then answer ``FINISHED``.

        Tune's restored state still counts the places of trials it lost that were recorded
        from their run folders (:meth:`settle`); without this it would draw that many trials
        beyond the budget."""
        self._new_left = max(int(n), 0)

    # ------------------------------------------------------------------ Tune hooks
    def suggest(self, trial_id: str) -> dict | None:
        if self._new_left is not None and self._new_left <= 0:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's "no more trials"
        out = super().suggest(trial_id)
        if self._new_left is not None and isinstance(out, dict):
            self._new_left -= 1
        ot = self._ot_trials.get(trial_id)
        if ot is not None and self._ot_study is not None:
            self._ot_study._storage.set_trial_user_attr(ot._trial_id, "tune_trial_id", trial_id)
        return out

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        value = result.get(self.metric)
        if ot_trial is None or value is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a re-reported step after a resume is ignored
            try:
                ot_trial.report(float(value), step)
            except (ValueError, TypeError, NotImplementedError):
                pass

    def _tell(self, trial_id: str, state: TrialState, values: Any = None) -> None:
        try:
            assert self._ot_study is not None
            self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        except Exception as e:  # noqa: BLE001 - Optuna refuses e.g. a finished trial
            log.warning("could not tell Optuna trial %s %s: %s", trial_id, state.name, e)
        self._completed_trials.add(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if not error and result and result.get("trial_error"):
            self._tell(trial_id, TrialState.FAIL)
            return
        if not error and trial_id in self.ctx.pruned:
            if result:
                self.on_trial_result(trial_id, result)
            self._tell(trial_id, TrialState.PRUNED)
            return
        if result and not isinstance(self.metric, list):
            v = result.get(self.metric)
            if v is not None and not math.isfinite(float(v)):
                self._tell(trial_id, TrialState.FAIL)
                return
        super().on_trial_complete(trial_id, result=result, error=error)

    def study(self) -> optuna.Study | None:
        """The underlying Optuna study."""
        return self._ot_study
