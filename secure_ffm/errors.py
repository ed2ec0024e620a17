"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class SecureFFMError(Exception):
    """Base class of every error secure-ffm raises on purpose."""


class ConfigError(SecureFFMError, ValueError):
    """A configuration value is wrong; the message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        message = f"{key}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


@contextmanager
def section_renamed(old: str, new: str) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` on ``old.key`` as one on ``new.key``.

    Code that validates or loads one section type for another table (the ``[data]`` keys read
    for ``[public_data]``) names the table the user wrote.
    """
    try:
        yield
    except ConfigError as error:
        if not error.key.startswith(f"{old}."):
            raise
        raise ConfigError(f"{new}.{error.key[len(old) + 1 :]}", error.problem, error.fix) from None


class MissingResourceError(SecureFFMError, RuntimeError):
    """An offline data or model package is not installed; the message names the command that installs it."""

    def __init__(self, what: str, install_command: str) -> None:
        self.what = what
        self.install_command = install_command
        super().__init__(f"{what} is not installed: run `{install_command}`")


class RoundAbortedError(SecureFFMError, RuntimeError):
    """Secure aggregation aborted a round (e.g. fewer survivors than the threshold) and the run is set to stop."""


class CheckpointError(SecureFFMError, ValueError):
    """A checkpoint on disk cannot be read back (truncated, corrupt, or from another model); the message names the file."""
