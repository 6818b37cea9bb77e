"""Exceptions with messages meant for users (the CLI prints them as one line).

Every error a user can cause with a bad argument, name, file or folder is an
``InputError`` (also a ``ValueError``); the model and run errors below are kinds of it.
"""


class SolensError(Exception):
    """Base class of every error solens reports to a user."""


class InputError(SolensError, ValueError):
    """A bad user input: a missing folder, an out-of-range layer, a corrupt file."""


class UnsupportedModelError(InputError):
    """The model (or its vision tower) is outside what the lens supports."""


class UnknownModelError(InputError):
    """A model name, pretrained tag or checkpoint that cannot be resolved."""


class RunMismatchError(InputError):
    """A run folder whose manifest disagrees with the requested run."""


class RunLockedError(SolensError):
    """A run folder that another solens process is writing."""


class StorageError(SolensError, OSError):
    """A file could not be written (no space left, a read-only or unwritable folder); what
    was already written stays valid (every write is atomic)."""
