"""Outputs appear at their target paths complete or not at all.

Every output is written to a hidden temporary file in its target's folder (same file
system, so the final ``os.replace`` is atomic) and renamed only after every output of the
run was written. A failure, Ctrl-C or SIGTERM deletes the temporaries; a SIGKILLed run
leaves hidden temporaries that never sit at a target path and that
``remove_stale_temps`` removes once their process is gone.

Temporary names look like ``.<name>.segearth-<pid>-<random>.tmp<ext>``: the real extension
is kept so that GDAL and OGR pick the right driver from the name, and the pid lets a later
run tell an abandoned temporary from one a live run is still writing.

Nothing here needs a POSIX system to be imported: output locks use ``fcntl`` where it exists
and ``msvcrt`` on Windows.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Iterable

from .errors import OutputError, UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere but Windows
    msvcrt = None

_TEMP_MARK = re.compile(r"^\..*\.segearth-(?P<pid>\d+)-(?P<token>[0-9a-z]+)\.tmp")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM.

    It derives from KeyboardInterrupt so that every clean-up path written for Ctrl-C
    (``finally`` blocks, ``AtomicOutputs``) also runs for a polite kill from a scheduler.
    """


class TerminationHandler:
    """A SIGTERM handler that raises ``Terminated`` and remembers that the signal came.

    Install it from the main thread of the command line only (library code must not change
    a host program's signal handling). ``received`` tells a polite kill from Ctrl-C after
    both have ended in the same KeyboardInterrupt clean-up.
    """

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002 - signal handler signature
        self.received = True
        raise Terminated(f"terminated by signal {signum}")


#: Bytes a temporary's name leaves free for the side files writers add to it (SQLite's
#: ``-journal`` and ``-wal``, GDAL's ``.aux.xml``, the Cloud-Optimized GeoTIFF writer's
#: ``.stage-probability.tif``, and GDAL's side files of that).
_SIDE_FILE_ROOM = 32


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, the file system of ``folder`` allows (255 where it cannot say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def temp_name_for(target: Path, pid: int | None = None) -> Path:
    """A hidden sibling of ``target`` that keeps its extension (GDAL picks drivers by it).

    The target's name is shortened inside the temporary's when the whole would not fit
    the file system's name limit: any legal output name gets a legal temporary.
    """

    token = secrets.token_hex(4)
    pid = os.getpid() if pid is None else pid
    mark = f".segearth-{pid}-{token}.tmp{target.suffix}"
    room = name_max(target.parent if target.parent.is_dir() else ".") - _SIDE_FILE_ROOM - len(os.fsencode(mark)) - 1
    stem = os.fsencode(target.name)[: max(1, room)].decode("utf-8", "ignore") or "o"
    return target.with_name(f".{stem}{mark}")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        # Signal 0 is CTRL_C_EVENT on Windows: probing would interrupt the other process.
        # Keeping a dead run's temporaries only costs disk space until someone removes them.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries (and their side files) left by segearth processes that no longer run.

    Returns the paths removed. Temporaries of live processes, this one included, are kept.
    """

    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_MARK.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError:  # already gone, or not ours to delete: leave it
            continue
        removed.append(Path(entry.path))
    return removed


def write_atomically(path: str | os.PathLike, content: bytes | str) -> None:
    """Write a small file whole or not at all: a hidden temporary beside it, then a rename.

    Text is written as UTF-8. Raises OutputError (exit code 5) naming ``path`` when the
    folder cannot be written; the temporary is gone then. A SIGKILLed writer leaves a
    temporary that ``remove_stale_temps`` recognises.
    """

    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    temp = temp_name_for(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as error:
        _remove_quietly(temp)
        if isinstance(error, OSError):
            raise OutputError(f"{path}: cannot be written ({error.strerror or error})") from None
        raise


def write_failure_reason(path: str | os.PathLike, error: BaseException) -> str:
    """Why writing ``path`` failed, in the operating system's words where it has any.

    GDAL and SQLite report a full disk as a failed write or "database or disk is full";
    the errno of a small probe write beside ``path`` says what really happened. Call it
    before the partial file is deleted, while the disk is still as full as the write found it.
    """

    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    probe = temp_name_for(Path(path).with_name("probe"))
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(_PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as probed:
        return probed.strerror or str(probed)
    finally:
        _remove_quietly(probe)
    from .errors import first_line

    return first_line(error)


#: Enough for a probe write to need a fresh block of any file system.
_PROBE_BYTES = 64 * 1024


def check_name_fits(target: Path, extra_suffixes: Iterable[str] = ()) -> None:
    """Raise OutputError (exit code 5) when ``target``'s name (or a side file's: ``extra_suffixes``)
    is longer than its file system allows."""

    folder = target.parent if target.parent.is_dir() else Path(".")
    limit = name_max(folder)
    longest = max([len(os.fsencode(target.name + suffix)) for suffix in ("", *extra_suffixes)])
    if longest > limit:
        needed = "" if longest == len(os.fsencode(target.name)) else " with the side files it needs"
        raise OutputError(f"{target}: file name too long ({longest} bytes{needed}; the file system allows {limit})")


def check_target_writable(target: Path, overwrite: bool) -> None:
    """Raise OutputError (exit code 5) unless ``target`` can be (over)written."""

    check_name_fits(target)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder, not a file")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputError(f"{target}: already exists (pass --overwrite to replace it)")
    folder = target.parent
    if not folder.exists():
        raise OutputError(f"{target}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{target}: {folder} is not a folder")
    reason = folder_write_problem(folder)
    if reason is not None:
        raise OutputError(f"{target}: folder {folder} is not writable ({reason})")


def folder_write_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None when one can.

    Found by creating (and removing) a temporary there: permission bits do not tell, for a
    superuser, about immutable folders, or about file systems that refuse writes to anyone.
    """
    probe = temp_name_for(folder / "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    _remove_quietly(probe)
    return None


def future_folder_problem(folder: Path) -> tuple[Path, str | None]:
    """(the nearest folder of ``folder`` or its parents that exists, why ``folder`` cannot be
    made or written there, or None). For outputs whose folder is made when they are written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, f"{existing} is not a folder"
    reason = folder_write_problem(existing)
    return existing, None if reason is None else f"folder {existing} is not writable ({reason})"


class AtomicOutputs:
    """Context manager that hands out temporary paths and commits them all at the end.

    >>> with AtomicOutputs([Path("mask.tif"), Path("camps.gpkg")], overwrite=False) as outputs:
    ...     write_mask(outputs.temp_path(Path("mask.tif")))
    ...     write_vectors(outputs.temp_path(Path("camps.gpkg")))

    All checks happen in the constructor, before any work starts. On a clean exit every
    temporary is renamed onto its target; on any exception (KeyboardInterrupt and
    ``Terminated`` included) all temporaries and their side files are deleted and the
    exception propagates. Renames are individually atomic; if one of several renames fails
    (the folder vanished) the outputs already renamed stay and the rest are deleted.
    """

    def __init__(self, targets: Iterable[str | os.PathLike], overwrite: bool = False):
        self.overwrite = overwrite
        self.targets: list[Path] = []
        seen: dict[str, Path] = {}
        for raw in targets:
            target = Path(raw).expanduser()
            key = os.path.realpath(target)
            if key in seen:
                raise UsageError(f"{target}: output given more than once")
            seen[key] = target
            check_target_writable(target, overwrite)
            self.targets.append(target)
        self._temps: dict[Path, Path] = {}

    def __enter__(self) -> "AtomicOutputs":
        for target in self.targets:
            self._temps[target] = temp_name_for(target)
        return self

    def temp_path(self, target: str | os.PathLike) -> Path:
        """The temporary path the sink for ``target`` writes to."""

        target = Path(target).expanduser()
        try:
            return self._temps[target]
        except KeyError:
            raise KeyError(f"{target} is not one of this run's outputs") from None

    def __getitem__(self, target: str | os.PathLike) -> Path:
        return self.temp_path(target)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc_type is not None:
            self.discard()
            return False
        self.commit()
        return False

    def commit(self) -> None:
        """Rename every temporary onto its target (``os.replace``: atomic per file)."""

        pending = list(self._temps.items())
        try:
            # Check everything first, so that one missing output does not leave the others half-committed.
            for target, temp in pending:
                if not temp.exists():
                    raise OutputError(f"{target}: nothing was written to it")
                if not self.overwrite and os.path.lexists(target):
                    raise OutputError(f"{target}: appeared while this run was writing it (pass --overwrite to replace it)")
            for target, temp in pending:
                try:
                    os.replace(temp, target)
                except OSError as error:
                    raise OutputError(f"{target}: cannot be written ({error.strerror or error})") from None
                _remove_side_files(temp)
                self._temps.pop(target)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Delete every temporary not yet committed, and the files derived from it."""

        for temp in list(self._temps.values()):
            _remove_quietly(temp)
            _remove_side_files(temp)
        self._temps.clear()


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_side_files(temp: Path) -> None:
    """Delete files whose names extend the temporary's (journals, staging files, .aux.xml)."""

    try:
        entries = list(os.scandir(temp.parent))
    except OSError:
        return
    prefix = temp.name
    for entry in entries:
        if entry.name != prefix and entry.name.startswith(prefix):
            _remove_quietly(Path(entry.path))


class LockHeld(OutputError):
    """Another run holds the lock of an output (not a failure to take it)."""


class OutputLock:
    """Inter-process lock for one output path, held in ``<path>.lock`` in the same folder.

    ``wait=False`` raises OutputError at once when another run holds the lock; ``wait=True``
    blocks until it is free. The lock file is removed on release.

    Removing a lock file races with a waiter that already opened it: that waiter would then
    hold a lock on an unlinked inode while a newcomer locks a fresh file. So the holder
    unlinks while still holding the lock, and every acquirer checks, once locked, that the
    path still names the inode it locked, and starts over when it does not. (filelock keeps
    its lock files forever for this reason, which would litter output folders.) Windows
    cannot delete a file anyone holds open, so there the holder deletes it after closing,
    which fails harmlessly while a waiter has it open.
    """

    #: Added to the output's name to name its lock file.
    SUFFIX = ".lock"

    def __init__(self, path: str | os.PathLike, wait: bool = False):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + self.SUFFIX)
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        if self._fd is not None:
            return self
        if fcntl is None and msvcrt is None:
            raise OutputError(f"{self.path}: this system offers no file locks (neither fcntl nor msvcrt)")
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as error:
                raise OutputError(f"{self.path}: cannot create lock {self.lock_path} ({error.strerror or error})") from None
            try:
                locked = _lock_file(fd, self.wait)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                os.close(fd)
                raise LockHeld(f"{self.path}: another segearth run is writing it (lock {self.lock_path.name})")
            if self._names_the_file(fd):
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError as error:
                    _remove_quietly(self.lock_path)
                    _unlock_file(fd)
                    os.close(fd)
                    raise OutputError(f"{self.path}: cannot create lock {self.lock_path} "
                                      f"({error.strerror or error})") from None
                self._fd = fd
                return self
            _unlock_file(fd)  # the previous holder removed this file after we opened it
            os.close(fd)

    def _names_the_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.lock_path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_ino, on_disk.st_dev) == (held.st_ino, held.st_dev)

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is not None:
            _remove_quietly(self.lock_path)
        _unlock_file(self._fd)
        os.close(self._fd)
        self._fd = None
        if fcntl is None:
            _remove_quietly(self.lock_path)

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> bool:
        self.release()
        return False


#: How often a waiting lock retries where the system cannot block until a lock is free (Windows).
_LOCK_POLL_SECONDS = 0.1


def _lock_file(fd: int, wait: bool) -> bool:
    """Lock the open file exclusively; False when another holder has it and ``wait`` is False."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    while True:
        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError:  # held by another process
            if not wait:
                return False
            time.sleep(_LOCK_POLL_SECONDS)
            continue
        return True


def _unlock_file(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
