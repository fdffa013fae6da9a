"""Errors a user can cause. The command line prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class PccoreError(Exception):
    """A problem the user can fix; its message is shown as is. `exit_code` is the process status."""

    exit_code = 1


class UsageError(PccoreError):
    """Bad input on the command line or in a recipe (exit status 2)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe that cannot be read or does not match the schema."""


class PluginError(PccoreError):
    """A plugin that cannot be loaded, registers something malformed, or conflicts with another."""


class DatasetUnavailable(PccoreError):
    """A dataset that is neither on disk nor downloadable: the message says what, where and how."""


class DeviceUnavailable(UsageError):
    """The requested device does not exist on this machine."""


class DivergenceError(PccoreError):
    """A non-finite energy or loss; the message names the epoch, batch and layer."""


class MissingDependency(PccoreError):
    """An optional dependency is not installed; the message says which extra provides it."""
