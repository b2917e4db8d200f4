"""The exceptions pipesched raises; each message is one sentence naming the value and the fix."""

from __future__ import annotations

__all__ = [
    "PipeschedError",
    "ConfigError",
    "ScheduleError",
    "StrategyError",
    "DeadlockError",
    "OutOfMemoryError",
]


class PipeschedError(Exception):
    """Base class: a user-facing error whose message is one actionable sentence.

    The CLI prints the message alone and exits with status 2.

    >>> str(ConfigError("--devices 0 is not allowed; use 1 or more"))
    '--devices 0 is not allowed; use 1 or more'
    """


class ConfigError(PipeschedError, ValueError):
    """A configuration value (a flag, a model size, a partition) is invalid."""


class ScheduleError(PipeschedError, ValueError):
    """A schedule breaks a rule: a missing, repeated or misordered action."""


class StrategyError(PipeschedError):
    """A strategy plug-in could not be found, loaded, or planned."""


class DeadlockError(PipeschedError):
    """A schedule can never finish: some devices wait for inputs that never come."""


class OutOfMemoryError(PipeschedError):
    """A device needs more memory than ``--device-memory`` gives it."""
