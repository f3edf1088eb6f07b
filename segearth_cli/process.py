"""Settings of a process the command line owns: its own, and each Ray worker's."""

from __future__ import annotations

import ctypes
import sys


def share_one_malloc_arena() -> None:
    """Make every thread of this process allocate from one glibc arena; call before starting threads.

    A model on the CPU allocates and frees hundreds of megabytes per window. glibc gives
    each new thread an arena of its own and hands a secondary arena's freed memory back to
    the kernel, so a model running in a pipeline thread page-faults its activations in
    again on every window: 7.2 - 7.8 s per full-size window against 5.5 - 6.2 s in the main
    thread, and 9.6 s against 7.6 s for a process's first window (2-core Xeon, torch 2.13).
    One arena keeps that memory for the next window, at about 0.4 GB more peak RSS. Not
    glibc (macOS, musl, Windows): nothing to do.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    arena_max = -8  # M_ARENA_MAX in glibc's malloc.h
    mallopt(ctypes.c_int(arena_max), ctypes.c_int(1))


def keep_native_messages_off_stderr() -> None:
    """Silence what C libraries write straight to file descriptor 2; Python keeps the real stderr.

    libtiff prints ``_tiffWriteProc: No space left on device.``, libpng ``libpng error:``,
    and GDAL, outside a rasterio call, its fallback ``ERROR 1: ...`` lines, all beside the
    one error line the command promises. Every failure they report also reaches Python as
    an error that the command words itself, naming the target and the reason. A crash
    still says where (Python's fault handler writes to the kept stderr). With ``--debug``
    the command leaves stderr alone. Call before starting threads.
    """
    import faulthandler
    import os

    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        kept = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr to speak of: nothing to do
        return
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    python_stderr = open(kept, "w", encoding=encoding, errors="backslashreplace", buffering=1)
    silent = os.open(os.devnull, os.O_WRONLY)
    os.dup2(silent, 2)
    os.close(silent)
    sys.stderr = python_stderr
    # A crash (a signal, an abort in native code) would otherwise end the run without a word.
    faulthandler.enable(file=python_stderr)
