"""The errors every door maps to an exit code. Core: imports nothing of ringtrain.

`UserError` and its subclasses are problems the user must fix (a config value, the data, the cluster's
size): the doors print the message, which names the problem and the fix, and exit 2. Retrying cannot
help, so the training launcher never retries them. Anything else is a failure (exit 1).
"""
from __future__ import annotations


class UserError(Exception):
    """Bad configuration or input: exit 2, never retried. The message says what to fix."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or invalid. The message names the key."""


class DatasetError(UserError, ValueError):
    """A dataset folder is missing, unpublished or inconsistent with its manifest."""


class BadDataError(UserError, ValueError):
    """Too many rows failed validation: nothing was published."""


class SchemaDriftError(UserError, ValueError):
    """The source's columns differ from the declared ones (missing, extra or retyped)."""


class SourceNotFound(UserError, FileNotFoundError):
    """The configured source path does not exist."""


class NotEnoughSlots(UserError, RuntimeError):
    """The cluster cannot run all barrier tasks at once."""


class TrainingFailed(RuntimeError):
    """Every launch attempt failed; the message holds the root cause and where the logs are. Exit 1."""


class EnvironmentProblems(UserError):
    """`ringtrain doctor` found set-up problems that would break a run; each names its fix."""

    def __init__(self, problems: list) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) would break a run:\n{lines}")


class PackError(UserError):
    """`ringtrain pack` cannot build the environment archive (not a checkout, a failed build)."""
