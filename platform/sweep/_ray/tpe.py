"""TPE at sweep scale: Optuna's ``TPESampler`` with a bounded history and per-suggest sharing.

Optuna's TPE costs O(trials) per suggest, several times over: it lists every trial of the study
for the search-space groups and again for each group, re-adds every finished trial to the groups,
and then, for each group, scores every modelled trial (pruned trials by their last intermediate
value, every trial by its constraints) and converts every parameter value. At 10,000 trials that
is ~0.1 s per suggest. :class:`RecentTPESampler` keeps Optuna's algorithm and code path and
changes only what it is given to work on:

* **A bounded history.** It models at most ``max_history`` finished trials: the most recent ones
  plus the best ``n_best`` ever (so the good group keeps the best configs ever seen). Up to
  ``max_history`` finished trials it is exactly Optuna's TPE (tested: same draws).
* **No listing of every trial.** A :class:`_Book` per study holds the trials read so far; each
  suggest reads only the new trials and those not finished when last read (O(1) storage reads
  each) and keeps the modelled ones in number order. The lists TPE asks for (per state filter,
  windowed or not) are made from it once per suggest and shared by the groups. The old part of
  each window is kept incrementally (:class:`_Window`).
* **Each finished trial handled once.** Finished trials never change, so the search-space
  groups add each one once, as the book finds it (:class:`_IncrementalGroups`), and TPE models
  a slim copy of it
  (:func:`_slim`) that carries only what TPE reads and keeps its parameters' internal values
  once converted.
* **One good/bad split per suggest.** Every group of one suggest splits the same list of
  trials; :meth:`RecentTPESampler._sample` (Optuna's ``_sample``, step for step) makes the
  split once and shares it, with or without the constant liar (Optuna 5's default).
* **The study's directions read once per suggest** (Optuna reads them from storage per trial
  scored).
"""

from __future__ import annotations

import bisect
import copy
import heapq
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.sampler import (
    _split_trials,
    default_gamma,
    default_gamma_multiobjective,
)
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RecentTPESampler"]

_FINISHED = frozenset(s for s in TrialState if s.is_finished())
_MODELLED = frozenset((TrialState.COMPLETE, TrialState.PRUNED))
#: the states a list made from the book may ask for
_BOOKED = _MODELLED | {TrialState.RUNNING}
#: system attrs TPE reads of a finished trial: its constraints (Optuna's old and new keys)
_CONSTRAINTS = "constraints"


def _number(t: FrozenTrial) -> int:
    return t.number


class _SlimTrial(FrozenTrial):
    """A finished trial as TPE models it (see :func:`_slim`), with its parameters' internal
    representations kept as they are first converted (``reprs``)."""

    reprs: dict[str, float]


def _slim(t: FrozenTrial) -> _SlimTrial:
    """``t`` with only what TPE reads of a finished trial: its state, number, value(s),
    params and distributions, its constraints (in ``system_attrs``) and, of its intermediate
    values, the last step's (the score of a pruned trial is ``max(intermediate_values.items())``,
    a function of the last step only)."""
    attrs = {
        k: v
        for k, v in t.system_attrs.items()
        if k == _CONSTRAINTS or k.startswith(_CONSTRAINTS + ":")
    }
    iv = t.intermediate_values
    slim = _SlimTrial(
        number=t.number,
        state=t.state,
        value=None,
        values=t.values,
        datetime_start=t.datetime_start,
        datetime_complete=t.datetime_complete,
        params=t.params,
        distributions=t.distributions,
        user_attrs={},
        system_attrs=attrs,
        intermediate_values=dict([max(iv.items())]) if iv else {},
        trial_id=t._trial_id,
    )
    slim.reprs = {}
    return slim


class _Window:
    """The old part of one trial list, kept incrementally: which finished trials have left the
    recent window, and the ``n_best`` best of them (score, number)."""

    def __init__(self) -> None:
        self.old: set[int] = set()
        self.best: list[tuple[float, int]] = []


class _Book:
    """The study's trials as the sampler has seen them, brought up to date at each suggest by
    reading only the trials not seen yet and those not finished when last read (O(1) storage
    reads each), instead of listing every trial (O(trials) per suggest).

    A finished trial never changes, so it is read once. Trial numbers are dense: a suggest for
    trial ``m`` reads every new number up to ``m`` (a trial enqueued beyond it is read when a
    later suggest passes it).
    """

    def __init__(self, study_id: int) -> None:
        self.study_id = study_id
        self.n = 0  # trials 0..n-1 have been read
        #: COMPLETE and PRUNED trials (what TPE models) by number
        self.modelled: list[FrozenTrial] = []
        #: the same trials in the order they were found (the search-space groups add them so)
        self.found: list[FrozenTrial] = []
        self.open: dict[int, FrozenTrial] = {}  # not finished when last read, by number
        self.running: list[FrozenTrial] = []  # the RUNNING ones of ``open``, by number

    def sync(self, storage: optuna.storages.BaseStorage, upto: int) -> None:
        """Read trials ``n..upto`` and every open trial again."""
        fresh = [storage.get_trial(t._trial_id) for t in self.open.values()]
        while self.n <= upto:
            try:
                tid = storage.get_trial_id_from_study_id_trial_number(self.study_id, self.n)
            except KeyError:  # not created (yet)
                break
            fresh.append(storage.get_trial(tid))
            self.n += 1
        found = []
        for t in fresh:
            if t.state in _FINISHED:
                self.open.pop(t.number, None)
                if t.state in _MODELLED:
                    found.append(t)
            else:
                self.open[t.number] = t
        found.sort(key=_number)
        for t in found:
            bisect.insort(self.modelled, t, key=_number)
        self.found += found
        running = [t for t in self.open.values() if t.state == TrialState.RUNNING]
        self.running = sorted(running, key=_number)


class _Suggest:
    """What one suggest shares: the book (brought up to date once), the lists made from it (by
    state filter and window size), and the slim copies of the finished trials modelled."""

    def __init__(self, key: tuple[int, int], book: _Book | None, prev: _Suggest | None) -> None:
        self.key = key
        self.book = book
        self.lists: dict[Any, list[FrozenTrial]] = {}
        self.slim: dict[int, _SlimTrial] = {}
        #: TPE's good/bad split of a list (the same for every group of one suggest)
        self.split: dict[tuple[int, int], tuple[list[FrozenTrial], list[FrozenTrial]]] = {}
        #: the previous suggest's slim copies (reused: finished trials never change)
        self.prev_slim = prev.slim if prev is not None else {}


class _RecentView:
    """A study seen through a window: ``_get_trials`` returns the last ``k`` finished trials,
    the ``n_best`` best of the older finished trials, and every running trial (everything else
    is the study's own; ``k <= 0``: every trial).

    The older trials only ever grow (a finished trial stays finished), so ``windows`` (kept by
    the sampler, one per study and state filter) remembers them and their best; a call scans
    only the trials that left the window since the last one, from the newest back (a trial that
    finishes long after it started is found deeper in that scan). With a ``_Suggest``, the
    lists come from its book and each is made once per suggest.
    """

    def __init__(
        self,
        study: optuna.Study,
        k: int,
        n_best: int,
        windows: dict[Any, _Window],
        shared: _Suggest | None = None,
    ) -> None:
        self._study, self._k, self._n_best, self._windows = study, k, n_best, windows
        self._shared = shared
        self.directions = study.directions
        if len(self.directions) == 1:
            self.direction = self.directions[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    def _get_trials(
        self, deepcopy: bool = True, states: Sequence[TrialState] | None = None, **kw: Any
    ) -> list[FrozenTrial]:
        if deepcopy or self._shared is None:
            trials = self._study._get_trials(deepcopy=deepcopy, states=states, **kw)
            return self._windowed(trials, states)
        sel = None if states is None else tuple(states)
        got = self._shared.lists.get((sel, self._k))
        if got is None:
            got = self._shared.lists[(sel, self._k)] = self._from_book(sel, states, **kw)
        return got

    def _from_book(
        self, sel: tuple[TrialState, ...] | None, states: Any, **kw: Any
    ) -> list[FrozenTrial]:
        """A list TPE asks for, made from the book: its COMPLETE and PRUNED trials (and the
        RUNNING ones) in number order. Other filters are listed from storage."""
        book = self._shared.book if self._shared is not None else None
        if book is None or sel is None or not _MODELLED <= set(sel) <= _BOOKED:
            trials = self._study._get_trials(deepcopy=False, states=states, **kw)
            return self._windowed(trials, states)
        running = book.running if TrialState.RUNNING in sel else []
        if self._k <= 0:
            if not running:
                return book.modelled
            return list(heapq.merge(book.modelled, running, key=_number))
        return self._window_of(book.modelled, running, states)

    def _windowed(
        self, trials: list[FrozenTrial], states: Sequence[TrialState] | None
    ) -> list[FrozenTrial]:
        if self._k <= 0:  # the whole study (the search-space groups)
            return trials
        finished: list[FrozenTrial] = []
        running: list[FrozenTrial] = []
        for t in trials:  # one pass: the only O(trials) work of a list
            (finished if t.state in _FINISHED else running).append(t)
        return self._window_of(finished, running, states)

    def _window_of(
        self,
        finished: list[FrozenTrial],
        running: list[FrozenTrial],
        states: Sequence[TrialState] | None,
    ) -> list[FrozenTrial]:
        """The window over ``finished`` plus ``running`` (each in number order)."""
        if len(finished) <= self._k:
            kept = finished
            if self._shared is not None:
                kept = [self._slim_of(t) for t in kept]
            return list(heapq.merge(kept, running, key=_number)) if running else kept
        kept = self._best_old(finished, states) + finished[-self._k :]
        if self._shared is not None:
            kept = [self._slim_of(t) for t in kept]
        return kept + running

    def _best_old(
        self, finished: list[FrozenTrial], states: Sequence[TrialState] | None
    ) -> list[FrozenTrial]:
        key = (self._study._study_id, None if states is None else tuple(states))
        w = self._windows.setdefault(key, _Window())
        old = finished[: -self._k]
        missing = len(old) - len(w.old)
        if missing:
            sign = 0.0
            if len(self.directions) == 1:
                maximize = self.directions[0] == optuna.study.StudyDirection.MAXIMIZE
                sign = -1.0 if maximize else 1.0
            for t in reversed(old):
                if t.number in w.old:
                    continue
                w.old.add(t.number)
                if sign and t.state == TrialState.COMPLETE and t.value is not None:
                    w.best.append((sign * float(t.value), t.number))
                missing -= 1
                if not missing:
                    break
            w.best = heapq.nsmallest(self._n_best, w.best)
        at = [bisect.bisect_left(old, n, key=_number) for n in sorted(n for _, n in w.best)]
        return [old[i] for i in at]

    def _slim_of(self, t: FrozenTrial) -> _SlimTrial:
        assert self._shared is not None
        s = self._shared.slim.get(t.number)
        if s is None:
            s = self._shared.prev_slim.get(t.number)
            if s is None or s.state != t.state:
                s = _slim(t)
            self._shared.slim[t.number] = s
        return s


class _IncrementalGroups(_GroupDecomposedSearchSpace):
    """Optuna's group-decomposed search space, adding each finished trial once.

    Optuna's own ``calculate`` re-adds every finished trial's distributions at every suggest:
    O(trials) per suggest (~10 us a trial, 0.1 s a suggest at 10,000 trials). Adding a trial's
    parameter set again never changes the groups (each set already is a union of groups, so
    the split it makes is empty), in content or order; skipping trials already added therefore
    gives exactly Optuna's result.
    """

    def __init__(self, include_pruned: bool) -> None:
        super().__init__(include_pruned)
        self._added: set[int] = set()
        self._book: _Book | None = None
        self._read = 0  # how many of the book's found trials were added

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_book": None, "_read": 0}

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> _SearchSpaceGroup:
        shared = getattr(study, "_shared", None)
        book = shared.book if isinstance(shared, _Suggest) else None
        if book is not None and self._include_pruned:  # only the trials found since last time
            if book is not self._book:
                self._book, self._read = book, 0
            trials: Sequence[FrozenTrial] = book.found[self._read :]
            self._read = len(book.found)
        else:
            states = (
                (TrialState.COMPLETE, TrialState.PRUNED)
                if self._include_pruned
                else (TrialState.COMPLETE,)
            )
            trials = study._get_trials(deepcopy=False, states=states, use_cache=use_cache)
        for t in trials:
            if t.number not in self._added:
                self._added.add(t.number)
                self._search_space.add_distributions(t.distributions)
        return copy.deepcopy(self._search_space)


class RecentTPESampler(TPESampler):
    """Optuna's ``TPESampler`` that models a bounded history (see the module docstring).

    Args:
        max_history: finished trials TPE models at most (recent ones first).
        n_best: of those, the best ever kept regardless of age (single objective).
        **kwargs: ``TPESampler``'s options.
    """

    def __init__(self, *, max_history: int = 500, n_best: int = 25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_history < 1 or n_best < 0:
            raise ValueError("max_history must be >= 1 and n_best >= 0")
        self._max_history, self._n_best = int(max_history), int(n_best)
        self._windows: dict[Any, _Window] = {}
        self._books: dict[int, _Book] = {}
        self._shared: _Suggest | None = None
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _IncrementalGroups(include_pruned=True)

    def __getstate__(self) -> dict[str, Any]:
        # what this driver has read of the study is read again after unpickling
        return {**self.__dict__, "_shared": None, "_books": {}}

    def _view(self, study: optuna.Study, trial: Any = None, window: bool = True) -> Any:
        """The study as TPE sees it while it samples ``trial`` (see :class:`_RecentView`).

        With ``trial``, the study's book is brought up to date once per suggest and every list
        TPE asks for is made from it once. Nothing else changes the study while one trial is
        sampled (the driver is single-threaded), and the trial itself, still RUNNING, is not
        modelled. The slim copies of the previous suggest are reused (finished trials never
        change); those no longer modelled are dropped with it."""
        if isinstance(study, _RecentView):  # TPE's _sample_relative hands on the view
            study = study._study
        shared = None
        if trial is not None:
            key = (study._study_id, trial.number)
            if self._shared is None or self._shared.key != key:
                book = self._books.setdefault(study._study_id, _Book(study._study_id))
                book.sync(study._storage, trial.number)
                self._shared = _Suggest(key, book, self._shared)
            shared = self._shared
        k = self._max_history if window else 0
        return _RecentView(study, k, self._n_best, self._windows, shared)

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> Any:
        return super().infer_relative_search_space(self._view(study, trial, window=False), trial)

    def _sample_relative(self, study: optuna.Study, trial: Any, search_space: Any) -> Any:
        return super()._sample_relative(self._view(study, trial, window=False), trial, search_space)

    def _sample(
        self, study: optuna.Study, trial: Any, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Optuna's ``TPESampler._sample`` on the view, with the good/bad split of the
        modelled trials made once per suggest (Optuna makes it per group, O(history) each)."""
        view = self._view(study, trial)
        liar = self._constant_liar  # Optuna 5's default: running trials are modelled as bad
        states = (TrialState.COMPLETE, TrialState.PRUNED, *([TrialState.RUNNING] * liar))
        trials = view._get_trials(deepcopy=False, states=states, use_cache=not liar)
        shared = view._shared  # a view for a trial always has this suggest's
        assert shared is not None
        if liar:  # without the trial being sampled (one list for every group)
            key = ("liar", id(trials), trial.number)
            got = shared.lists.get(key)
            if got is None:
                got = shared.lists[key] = [t for t in trials if t.number != trial.number]
            trials = got
        if self._gamma is None:
            multi = len(view.directions) > 1
            self._gamma = default_gamma_multiobjective if multi else default_gamma
        n_below = self._gamma(sum(t.state != TrialState.RUNNING for t in trials))
        split = shared.split.get((id(trials), n_below))
        if split is None:
            split = shared.split[(id(trials), n_below)] = _split_trials(view, trials, n_below)
        below, above = split
        mpe_below = self._build_parzen_estimator(view, search_space, below, handle_below=True)
        mpe_above = self._build_parzen_estimator(view, search_space, above, handle_below=False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = TPESampler._compare(samples_below, acq_func_vals)
        for name, dist in search_space.items():
            ret[name] = dist.to_external_repr(ret[name])
        return ret

    def _get_internal_repr(
        self, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution], study: Any
    ) -> dict[str, np.ndarray]:
        """Optuna's, converting each finished trial's parameter once (kept on its slim copy)."""
        values: dict[str, list[float]] = {name: [] for name in search_space}
        names = search_space.keys()
        for t in trials:
            if not isinstance(t, _SlimTrial):
                params = self._get_params(t, study)
                if names <= params.keys():
                    for name, dist in search_space.items():
                        values[name].append(dist.to_internal_repr(params[name]))
                continue
            params, reprs = t.params, t.reprs
            if names <= params.keys():
                for name, dist in search_space.items():
                    v = reprs.get(name)
                    if v is None:
                        v = reprs[name] = dist.to_internal_repr(params[name])
                    values[name].append(v)
        return {k: np.asarray(v) for k, v in values.items()}
