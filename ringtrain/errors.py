"""The errors every door maps to an exit code. Core: imports nothing of ringtrain.

`UserError` and its subclasses are problems the user must fix (a config value, the data, the cluster's
size): the doors print the message, which names the problem and the fix, and exit 2. Retrying cannot
help, so the training launcher never retries them. A user's interrupt is `TrainingInterrupted` (exit 130,
never retried). Anything else is a failure (exit 1).
"""
from __future__ import annotations


class UserError(Exception):
    """Bad configuration or input: exit 2, never retried. The message says what to fix."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or invalid. The message names the key."""


class DatasetError(UserError, ValueError):
    """A dataset folder is missing, unpublished or inconsistent with its manifest."""


# The fix for a published version whose bytes no longer match its manifest.
REPUBLISH = "publish a fresh one (`ringtrain etl --force`) or train on another (--dataset)"


class BadDataError(UserError, ValueError):
    """Too many rows failed validation: nothing was published."""


class SchemaDriftError(UserError, ValueError):
    """The source's columns differ from the declared ones (missing, extra or retyped)."""


class SourceNotFound(UserError, FileNotFoundError):
    """The configured source path does not exist."""


class NotEnoughSlots(UserError, RuntimeError):
    """The cluster cannot run all barrier tasks at once."""


class ModelContractError(UserError, ValueError):
    """The model cannot be built, or its output or `layers()` breaks the contract the loop relies on."""


class FunctionContractError(UserError, ValueError):
    """A user's training function cannot run in the ring: it cannot be imported or unpickled on a rank, or its
    return value cannot come back to the driver (unpicklable, or too large)."""


class RankRefused(UserError):
    """A rank stopped on a problem the user must fix (configuration, model contract, data). Retrying the
    same spec would fail the same way, so the launcher does not retry."""


class TrainingFailed(RuntimeError):
    """Every launch attempt failed; the message holds the root cause and where the logs are. Exit 1."""


class TrainingInterrupted(Exception):
    """The user stopped the run (Ctrl-C, or the job cancelled in the Spark UI): not a failure, never retried.
    The message says how to resume. Exit 130, the shell's code for SIGINT."""

    exit_code = 130


class ModelNotFound(UserError, LookupError):
    """A model reference (alias, version, folder) that the registry or the store does not have."""


class FeatureMismatch(UserError, ValueError):
    """A dataset encoded with other feature statistics than the model's features.json."""


class ModelLocked(RuntimeError):
    """Another retrain of the same model holds its lock: exit 75 (EX_TEMPFAIL), retry later; nothing changed."""

    exit_code = 75


class EnvironmentProblems(UserError):
    """`ringtrain doctor` found set-up problems that would break a run; each names its fix."""

    def __init__(self, problems: list) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) would break a run:\n{lines}")


class PackError(UserError):
    """`ringtrain pack` cannot build the environment archive (not a checkout, a failed build)."""
