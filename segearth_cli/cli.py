"""The `segearth` command: parse, call, report.

``main()`` is the console entry point. It turns every way a run can end into one exit
status and at most one line on stderr, because scripts and cron read the status and
people read the line:

====  ==========================================================================
0     success, also when nothing was found
1     anything unexpected (one line; the traceback only with --debug)
2     usage error
3     unreadable or unsupported input
4     model unavailable
5     output exists without --overwrite, or cannot be written
130   interrupted (Ctrl-C, SIGINT); partial outputs removed
143   terminated (SIGTERM); partial outputs removed
====  ==========================================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
import warnings
from typing import Optional, Sequence

import typer

try:  # Typer 0.22+ carries its own copy of Click; older releases use the click package.
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_exceptions

from . import __version__
from .atomic import TerminationHandler
from .commands.batch import BATCH_HELP, batch_command
from .commands.doctor import doctor_command
from .commands.eval import eval_command
from .commands.models import models_app
from .commands.query import query_command
from .errors import EXIT_FAILURE, EXIT_USAGE, SegearthError, failure_line, one_line

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# The prose lines carry no hard breaks: the help formatter wraps them to the terminal, and a
# break of ours would land in the middle of its lines.
EXAMPLE = (
    "Example:\n\n"
    '    segearth query scene.tif "where could flood relief camps be placed?" \\\n'
    "        -o camps.gpkg -o camps.tif\n\n"
    "writes the answer as polygons (GeoPackage, in the scene's CRS) and as a mask GeoTIFF "
    "on the scene's grid. To try the pipeline without downloading a model:\n\n"
    '    segearth query sample_scenes/harbour_utm.tif "where are the roofs?" \\\n'
    "        --model tiny-random -o roofs.gpkg\n"
)

app = typer.Typer(
    name="segearth",
    help="Ask a question about a GeoTIFF scene; get back a georeferenced mask and polygons.\n\n" + EXAMPLE,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"segearth {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Ask a question about a GeoTIFF scene; get back a georeferenced mask and polygons."""


app.command(
    "query",
    help="Answer QUESTION(s) about SCENE and write the answer to every -o output.\n\n" + EXAMPLE,
    no_args_is_help=True,
)(query_command)
app.command("batch", help=BATCH_HELP, no_args_is_help=True)(batch_command)
app.command("eval", no_args_is_help=True)(eval_command)
app.add_typer(models_app, name="models")
app.command("doctor")(doctor_command)


class _OneLineWarnings:
    """Show each distinct warning once, as ``segearth: warning: ...`` without source lines.

    rasterio's NotGeoreferencedWarning and friends otherwise print a file path, a line
    number and a code excerpt that mean nothing to a user.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG002
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        if text in self.seen:
            return
        self.seen.add(text)
        logging.getLogger("segearth_cli").warning("%s", text)


class _LineFormatter(logging.Formatter):
    """``segearth: message`` for information, ``segearth: warning: message`` above it."""

    def __init__(self, debug: bool):
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage()) if not self.debug else record.getMessage()
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        where = f"{record.name}: " if self.debug else ""
        text = f"segearth: {level}{where}{message}"
        if self.debug and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(debug))
    root = logging.getLogger("segearth_cli")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    model_log = logging.getLogger("segearth_model")
    model_log.handlers[:] = [handler]
    model_log.setLevel(level)
    model_log.propagate = False
    # GDAL's own chatter (rasterio._env) is routed through warnings/SegearthError instead.
    logging.getLogger("rasterio").setLevel(logging.ERROR if not debug else logging.DEBUG)


def _error_line(message: str) -> None:
    first = one_line(message) or "unknown error"
    _to_stderr(f"segearth: error: {first}")


def _to_stderr(text: str) -> None:
    """Write to stderr if there is one: a script may run us with stderr closed (``2>&-``) or
    into a pipe that closed, and the exit status must still be the run's own."""
    if sys.stderr is None:  # closed at start: print(file=None) would write to stdout
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _interrupted(termination: TerminationHandler) -> int:
    """Say which signal ended the run; SIGTERM arrives as the same interrupt as Ctrl-C."""
    if termination.received:
        _error_line("terminated; partial outputs removed")
        return EXIT_TERMINATED
    _error_line("interrupted; partial outputs removed")
    return EXIT_INTERRUPTED


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line and exit with its status (see the module docstring)."""
    from .process import keep_native_messages_off_stderr, share_one_malloc_arena

    # The process is the command line's own: tune it before any thread exists.
    share_one_malloc_arena()
    if "--debug" not in (sys.argv[1:] if argv is None else argv):
        keep_native_messages_off_stderr()
    _exit_without_teardown(run(argv))


def _exit_without_teardown(status: int) -> None:
    """Exit with ``status`` as ``sys.exit`` would, less the interpreter's teardown.

    A loaded model is thousands of tensors and gigabytes: freeing them one by one at exit
    took 1.1 s of an 18 s query, and the operating system takes the memory back at once.
    What must happen at exit still does: the atexit handlers run (logging, a Ray driver's
    shutdown) and the standard streams are flushed. Every output was closed and committed
    before ``run`` returned.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when the process started
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say there
            pass
    os._exit(status)


def _asks_for_nothing(command, args: Sequence[str]) -> bool:
    """True for ``segearth`` alone, or a subcommand that answers nothing with its help."""
    if not args:
        return True
    subcommand = getattr(command, "commands", {}).get(args[0])
    return len(args) == 1 and bool(getattr(subcommand, "no_args_is_help", False))


def _help_on_stderr(command, args: Sequence[str]) -> int:
    """`segearth` or `segearth query` with nothing: the help is the answer, but a script that
    did this made a mistake, so the help goes where errors go (stdout is for results), and
    the status is a usage error's."""
    stream = sys.stderr if sys.stderr is not None else open(os.devnull, "w")
    try:
        with contextlib.redirect_stdout(stream):
            command.main(args=list(args), prog_name="segearth", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        # Typer's rich help printed itself and left the message empty; plain Click leaves
        # the help in the message.
        if exc.message.strip():
            _to_stderr(exc.message)
    except (OSError, SystemExit):  # stderr closed, or a closed pipe (rich exits then): the status still tells
        pass
    return EXIT_USAGE


def run(argv: Optional[Sequence[str]] = None) -> int:
    """The body of ``main`` that returns the exit status instead of exiting (used by tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    quiet = "--quiet" in args
    _configure_logging(debug, quiet)
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _OneLineWarnings()
    previous_term = None
    termination = TerminationHandler()
    try:
        previous_term = signal.signal(signal.SIGTERM, termination)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    command = typer.main.get_command(app)
    try:
        if _asks_for_nothing(command, args):
            return _help_on_stderr(command, args)
        result = command.main(args=args, prog_name="segearth", standalone_mode=False)
        # Click returns the status of ctx.exit()/typer.Exit in non-standalone mode, and
        # Typer turns a KeyboardInterrupt inside a command into status 130.
        status = result if isinstance(result, int) else 0
        return _interrupted(termination) if status == EXIT_INTERRUPTED else status
    except SegearthError as exc:
        if debug:
            traceback.print_exc()
        _error_line(exc.message)
        return exc.exit_code
    except click_exceptions.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _error_line(exc.format_message() + hint)
        return EXIT_USAGE
    except click_exceptions.ClickException as exc:
        _error_line(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        _error_line("interrupted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # Terminated included, when raised outside Typer's reach
        return _interrupted(termination)
    except BrokenPipeError:
        # stdout closed by a pager or `head`: not worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the last line of defence promises one line
        if debug:
            traceback.print_exc()
        detail = failure_line(exc)
        _error_line(detail if debug else f"{detail} (run again with --debug for the traceback)")
        return EXIT_FAILURE
    finally:
        warnings.showwarning = previous_showwarning
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    main()
