"""Error types with messages that name the file, key or row and what is allowed."""

from __future__ import annotations


class LesionSweepError(Exception):
    """Base class for user-facing errors: the CLI prints the message and exits non-zero."""


class ConfigError(LesionSweepError, ValueError):
    """A config, spec or search-space file is malformed or names an unknown key/value."""


class DataError(LesionSweepError, ValueError):
    """A dataset file is missing, has wrong columns, an unreadable image or a bad row."""


class TrainingError(LesionSweepError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""
