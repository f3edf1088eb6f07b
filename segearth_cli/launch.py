"""The ``segearth`` console script: Ctrl-C answers in one line even before the command line is imported.

Importing the command line (typer, rich, numpy, and what they import) takes most of a
second; a Ctrl-C then would print Python's traceback of the import. Nothing has started
yet, so there is nothing to clean up: the run ends with the interrupt's status at once.
"""

from __future__ import annotations

import os
import signal


def main() -> None:
    def interrupted_while_starting(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        os.write(2, b"segearth: error: interrupted\n")
        os._exit(130)

    # Only where Ctrl-C would interrupt anyway: a script may have started us ignoring it.
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, interrupted_while_starting)
    from .cli import main as run

    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    run()
