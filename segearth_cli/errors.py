"""Errors that end a command, each carrying the exit code a script can act on.

The codes are part of the command-line contract and documented in README.md.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_OUTPUT = 5


class SegearthError(Exception):
    """A failure the user can understand from one line; ``exit_code`` says which class."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(SegearthError):
    """The command line asks for something that cannot be done (bad option combination)."""

    exit_code = EXIT_USAGE


class InputError(SegearthError):
    """A scene (or data set) is unreadable, corrupt or of a kind the tool does not support."""

    exit_code = EXIT_INPUT


class ModelUnavailableError(SegearthError):
    """The model cannot be found, downloaded or loaded."""

    exit_code = EXIT_MODEL


class OutputError(SegearthError):
    """An output exists without --overwrite, or cannot be written."""

    exit_code = EXIT_OUTPUT


def first_line(exc: BaseException) -> str:
    """The one line of a library exception worth putting in a user's error message."""
    text = _formatted_arguments(exc) or str(exc).strip() or type(exc).__name__
    # rasterio wraps GDAL's reason as the cause and says only "See previous exception";
    # a user sees no previous exception, so the reason itself is the line to show.
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in text.lower():
        return first_line(cause)
    return text.splitlines()[0]


def _formatted_arguments(exc: BaseException) -> str:
    """GDAL's message for errors raised as (format, values...), which str() shows as a tuple
    ("('No such driver registered: %s', b'GTiff')"); empty for any other exception."""
    args = exc.args
    if len(args) < 2 or not isinstance(args[0], str) or "%" not in args[0]:
        return ""
    values = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in args[1:])
    try:
        return (args[0] % values).strip()
    except (TypeError, ValueError):
        return ""


def one_line(text: str) -> str:
    """``text`` with line breaks and runs of blanks made single spaces, for a one-line message."""
    return " ".join(str(text).split())


def failure_line(exc: BaseException) -> str:
    """One line for any exception: a SegearthError's message, else its type and first line.

    The type name matters for failures nobody anticipated ("KeyError: 'x'" says more than
    "'x'"); a SegearthError's message is already written for the user.
    """
    if isinstance(exc, SegearthError):
        return first_line(exc)
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
