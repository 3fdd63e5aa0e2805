"""User-facing errors. The message is exactly what the user sees: one line naming the file, field or value."""
from __future__ import annotations


class SaescopeError(Exception):
    """Base of every error meant for a user. The CLI prints ``error: <message>`` and exits with code 2."""


class ModelLoadError(SaescopeError):
    """A language model or tokenizer could not be found or loaded."""


class HookError(SaescopeError):
    """An unknown hook name, or a layer out of range."""


class CheckpointError(SaescopeError):
    """An SAE or training checkpoint is missing, corrupt, hostile or inconsistent."""


class ConfigError(SaescopeError):
    """A configuration value is invalid, or two configurations disagree."""


class InputError(SaescopeError):
    """A user-supplied value (text, feature index, strength, budget, path) is invalid."""


class NumericsError(SaescopeError):
    """A model or SAE produced NaN or inf."""


class DiskFullError(SaescopeError, OSError):
    """A file could not be written: disk full, file-size limit or quota (``saescope._io``). Names the file.
    Also an ``OSError``, so code that handles a failed write as one still does."""
