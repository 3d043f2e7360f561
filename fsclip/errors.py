"""Errors whose message tells the user what is wrong and what to do.

``train.py`` prints these as one ``ERROR:`` line instead of a traceback.
"""


class UserFacingError(Exception):
    """Base class: the message alone is enough for the user to act."""


class ConfigError(UserFacingError, ValueError):
    """A config file, key or command-line option is invalid."""


class DataError(UserFacingError, FileNotFoundError):
    """A dataset folder, split file or image is missing or unreadable."""


class WeightsNotFoundError(UserFacingError, FileNotFoundError):
    """Model weights cannot be found locally."""


class MissingDependencyError(UserFacingError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra)."""


class NonFiniteLossError(UserFacingError, FloatingPointError):
    """A training loss or gradient became NaN/inf; the message names the step and what to change."""
