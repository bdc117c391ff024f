"""Search spaces: declarative YAML compiled into an Optuna define-by-run function.

A space file (``search_spaces/<name>.yaml`` or a user's own) has the keys ``name``,
``description``, ``base`` and ``parameters`` (the format below).
Every parameter key is a flat run-config key (``method.pooling``, ``loss.gamma``, ``optim.lr``,
``train.batch_size``, ``data.image_size``, ``data.options.<opt>``) and carries exactly one
distribution:

* ``{choice: [a, b, ...]}``: a categorical over scalars (str, int, float, bool);
* ``{float: [low, high]}`` with optional ``log: true`` and ``step: s``;
* ``{int: [low, high]}`` with optional ``log: true`` and ``step: s`` (default 1);
* ``{const: value}``: a fixed value that is recorded as a parameter of the trial;

and optionally ``when: {earlier.param: value}`` or ``{earlier.param: [v1, v2]}`` (several
entries must all hold): the parameter is drawn only when that earlier parameter was drawn and took
one of those values.

Loading validates everything before any trial starts: the YAML shape, each distribution (empty
ranges, log ranges with ``low <= 0``, bad steps), each key against the method and loss
constructors (:func:`lesionsweep.methods.method_params`, :func:`~lesionsweep.methods.loss_params`)
and the run-config dataclasses, each value's type against the constructor's annotation or the
dataclass field, each condition (it must name an earlier parameter and a value that parameter can
take) and finally whole trial configs built from representative draws. Errors are
:class:`~lesionsweep.errors.ConfigError` naming the file, the key and what is allowed.

The code is split along these seams: :mod:`.spaces_distributions` (the distributions and a
random suggester), :mod:`.spaces_model` (parameters, spaces, the set of spaces of a sweep),
:mod:`.spaces_parse` (YAML → space) and :mod:`.spaces_validate` (the checks above); this module
re-exports their public names.

Nothing here imports Optuna: :meth:`SearchSpace.sample` calls ``suggest_*`` on whatever
trial-like object it is given (an ``optuna.trial.Trial`` in a sweep, a
:class:`RandomSuggester` in tests and validation).
"""

from __future__ import annotations

from .spaces_distributions import (
    Choice,
    Const,
    Distribution,
    FloatRange,
    IntRange,
    RandomSuggester,
    Scalar,
    Suggester,
    column_type,
    promote_types,
)
from .spaces_model import SEPARATOR, SPACE_PARAM, Param, SearchSpace, SpaceSet
from .spaces_parse import TOP_KEYS, load_space, space_from_dict
from .spaces_validate import reachable_backbones, reachable_values, validate_key, validate_space

__all__ = [
    "Choice",
    "FloatRange",
    "IntRange",
    "Const",
    "Distribution",
    "Param",
    "Scalar",
    "SearchSpace",
    "SpaceSet",
    "Suggester",
    "RandomSuggester",
    "SEPARATOR",
    "SPACE_PARAM",
    "TOP_KEYS",
    "load_space",
    "space_from_dict",
    "validate_key",
    "validate_space",
    "reachable_values",
    "reachable_backbones",
    "column_type",
    "promote_types",
]
