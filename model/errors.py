"""Why a model could not be loaded, as exceptions one line can report (no torch needed)."""

from __future__ import annotations


class ModelLoadError(Exception):
    """Loading failed for a reason one line can tell the user."""

    # Same meaning as the command line's "model unavailable" exit status.
    exit_code = 4

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointError(ModelLoadError):
    """A checkpoint file is missing, corrupt or does not fit the architecture."""


class ModelNotAvailableError(ModelLoadError):
    """The model is neither on disk nor downloadable right now."""
