"""Errors argen reports to users.

Every problem caused by the caller's input (unknown model, bad option, wrong checkpoint) raises an
``ArgenError`` subclass with a message that names the problem; the CLI prints it on one line and
exits with code 2. They also subclass ``ValueError`` so generic callers can catch them.
"""


class ArgenError(ValueError):
    """Base class of the errors argen raises for bad input."""


class ConfigError(ArgenError):
    """An invalid option, configuration value or condition (e.g. a class id out of range)."""


class CheckpointError(ArgenError):
    """A checkpoint that cannot be read, or whose keys/shapes do not fit the model."""


class UnknownModelError(ArgenError):
    """A model name that is neither in the zoo nor a pretrained folder."""


class DownloadError(ArgenError):
    """Weights that could not be fetched (offline, missing file, no access)."""
