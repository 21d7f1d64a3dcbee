"""One error hierarchy: every UserError ends a program with its message and exit code 2, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a flag, a file, a checkpoint or a run that cannot go on."""


class ConfigError(UserError, ValueError):
    """A bad flag, YAML key or combination of options."""


class DataError(UserError, ValueError):
    """A missing, unreadable or malformed data file (slide, annotation database, tile folder, CSV)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit what it claims to hold."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the program saves what it must and ends with exit code 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
