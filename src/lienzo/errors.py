"""Errors a user can cause; each message says what happened and what to do."""


class LienzoError(Exception):
    """Base class for every user-facing lienzo error (the CLI prints the message, no traceback)."""


class ModelNotFoundError(LienzoError):
    """A model path does not exist or holds no model."""


class CorruptCheckpointError(LienzoError):
    """A checkpoint file is truncated, malformed or not what its extension says."""


class UnsafeCheckpointError(LienzoError):
    """A pickle checkpoint needs code execution to load and was refused."""


class UnknownArchitectureError(LienzoError):
    """A state dict matches no known model family."""


class InvalidArgumentError(LienzoError):
    """An argument value is out of range or names nothing known."""
