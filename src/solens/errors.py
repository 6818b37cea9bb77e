"""Exceptions with messages meant for users (the CLI prints them as one line)."""


class SolensError(Exception):
    """Base class of every error solens reports to a user."""


class UnsupportedModelError(SolensError, ValueError):
    """The model (or its vision tower) is outside what the lens supports."""


class UnknownModelError(SolensError, ValueError):
    """A model name, pretrained tag or checkpoint that cannot be resolved."""


class RunMismatchError(SolensError):
    """A run folder whose manifest disagrees with the requested run."""


class InputError(SolensError, ValueError):
    """A bad user input: a missing folder, an out-of-range layer, a corrupt file."""
