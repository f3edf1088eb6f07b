"""Many scenes and questions in one run: job files, grouping, and the record that makes reruns idempotent.

A *job file* lists rows ``scene, question, output`` (CSV with that header, or JSON Lines
with those keys). Rows with the same scene and question form one *job*, whose outputs are
all the rows' outputs. Jobs that share a scene are computed by one :func:`run_query` call,
so each window of the scene is read and encoded once whatever the number of questions.
:func:`run_scene_group` computes one such scene group from plain data and a function
returning the segmenter, so another engine can run groups elsewhere. :func:`run_batch`, the
local engine, does the same work group after group, one group ahead: while a scene's windows
are in the model, the next group's records are checked, its outputs locked, its scene opened
and its first windows read, so the model finds them ready.

The idempotency record
----------------------
After a job's outputs are committed, ``<output>.segearth.json`` is written beside each of
them (atomically, temp file then rename). Its ``inputs`` object holds everything that can
change the output:

* ``scene``: the resolved path, the size, ``mtime_ns`` and ``partial_sha256`` (SHA-256 of
  the size, the first MiB and the last MiB). Hashing a whole multi-gigabyte scene on every
  nightly run would cost more than the skip saves; size + mtime catch every ordinary
  rewrite, and the partial hash catches a file replaced in place with its mtime restored
  (``cp -p``, ``rsync -t``) whenever the header or the end of the file differ, which is
  where GeoTIFF keeps its directory and georeferencing. The size and mtime of GDAL's
  sidecars (``.msk``, ``.ovr``, ``.aux.xml``) are included because they change the pixels
  the pipeline sees.
* ``question``: the job's question.
* ``model``: the id as given and the revision actually used (the commit hash for a hub
  model, a fingerprint of the files for a local directory, ``built-in`` for tiny-random),
  the dtype it ran in and the prompt template (``--task``).
* ``options``: every query option except those that cannot change the result (see
  :data:`OPTIONS_WITHOUT_EFFECT`). New options therefore count by default.
* ``tool``: the segearth version.

The record also stores the output's size and ``mtime_ns`` as committed, so an output that
was edited or replaced by hand is recomputed. GeoTIFF outputs carry the same ``inputs``
in their ``SEGEARTH_RECORD`` tag, so the provenance travels with the file.

Before a job's outputs are committed its records are rewritten with ``"state":
"pending"``; only after the commit do they become ``"complete"``. A run killed between the
two leaves a pending record, which the next run treats as "ours, not finished": it
recomputes that job and replaces the output without needing ``--overwrite``. An output with
no record at all was not written by a batch run and is replaced only with ``--overwrite``
or ``--force``.

A job is *skipped* when every output exists and every record is complete and matches.

Locks
-----
Each output is locked (:class:`segearth_cli.atomic.OutputLock`) from the moment a run
decides to compute it until its record is complete. A second run that finds an output
locked skips the job (status ``skipped``, reason ``locked by another run``) or, with
``wait=True``, waits for the lock and then checks the record again, which normally finds the
job finished by the other run. Locks are taken in sorted path order so waiting runs cannot
deadlock.

Exit status
-----------
:attr:`BatchReport.exit_code` is 0 when every job is ok or skipped; otherwise the exit code
of the first failed job in job-file order (3 for an unreadable scene, 4 for a model that
cannot be loaded, 5 for an output that cannot be written, 1 for anything unexpected; see
errors.py).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from . import __version__
from .atomic import write_atomically
from .errors import EXIT_FAILURE, EXIT_OK, InputError, OutputError, SegearthError, UsageError, failure_line, first_line
from .inputs import SIDE_SUFFIXES, job_inputs_of

log = logging.getLogger(__name__)

JOB_FIELDS = ("scene", "question", "output")
RECORD_SUFFIX = ".segearth.json"
RECORD_FORMAT = 1
#: GeoTIFF tag holding the same ``inputs`` object as the sidecar.
RECORD_TAG = "SEGEARTH_RECORD"
#: Query options that cannot change an output, so a rerun with a different value still skips.
OPTIONS_WITHOUT_EFFECT = frozenset({"batch_size", "overwrite", "workers", "max_windows"})

_PARTIAL_HASH_SPAN = 1 << 20

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"
REASON_UP_TO_DATE = "up to date"
REASON_LOCKED = "locked by another run"


# --------------------------------------------------------------------------- job files


@dataclass(frozen=True)
class Job:
    """One scene and one question, and every output the job file asks for them.

    ``number`` is the job's position (1-based) in order of first appearance in the file;
    ``lines`` are the file lines that named it.
    """

    number: int
    scene: Path
    question: str
    outputs: tuple[Path, ...]
    lines: tuple[int, ...]


def _clean_cell(value: Any, key: str, where: str) -> str:
    if value is None:
        raise UsageError(f"{where}: missing '{key}'")
    if not isinstance(value, str):
        raise UsageError(f"{where}: '{key}' must be text, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise UsageError(f"{where}: empty '{key}'")
    if key == "question":
        from .query import question_problem

        problem = question_problem(text)
        if problem is not None:
            raise UsageError(f"{where}: the question {problem}")
    return text


class NoJobs(UsageError):
    """A job file with a header and no rows. The command line treats it as nothing to do
    (exit 0 with a note): a scheduled run over an empty list has not failed."""


def check_job_questions(path: Path | str, jobs: Sequence[Job], check: Callable[[Sequence[str]], None]) -> None:
    """Run ``check`` (a model's question limits) on every job's question; a UsageError names the file and line."""
    for job in jobs:
        try:
            check([job.question])
        except UsageError as exc:
            raise UsageError(f"{path}: line {job.lines[0]}: {exc.message}") from None


def check_paths(path: Path | str, jobs: Sequence[Job], report: Optional[Path] = None) -> None:
    """Refuse, before any work, a run that would write onto a file it reads or writes twice.

    Every output, its record and lock, and the report are compared (real path, device and
    inode) with every file the scenes read (VRT sources, overviews, masks, side files) and
    the job file; ``--overwrite`` changes nothing here. They are also compared (real path)
    with each other: one job's output may not be another's record or lock, nor the report
    any of them. Names too long for the file system, side files included, are refused too.
    """
    from .atomic import OutputLock, check_name_fits
    from .query import refuse_input_as_output

    inputs = job_inputs_of(dict.fromkeys(job.scene for job in jobs))
    inputs.add(path)
    written: dict[str, str] = {}  # real path -> what the run writes there, in words

    def claim(target: Path, role: str, where: str) -> None:
        real = os.path.realpath(target)
        taken = written.get(real)
        if taken is not None and taken != role:
            raise UsageError(f"{where}: {target} is {role} and also {taken}; choose another output path")
        written[real] = role

    for job in jobs:
        where = f"{path}: line {job.lines[0]}"
        for output in job.outputs:
            check_name_fits(output, (RECORD_SUFFIX, OutputLock.SUFFIX))
            refuse_input_as_output(inputs, output)
            refuse_input_as_output(inputs, record_path(output), f"the record of {output.name}, ")
            refuse_input_as_output(inputs, OutputLock(output).lock_path, f"the lock of {output.name}, ")
            claim(output, f"the output of line {job.lines[0]}", where)
            claim(record_path(output), f"the record of {output.name} (line {job.lines[0]})", where)
            claim(OutputLock(output).lock_path, f"the lock of {output.name} (line {job.lines[0]})", where)
    if report is not None:
        refuse_input_as_output(inputs, report, "the --report file, ")
        taken = written.get(os.path.realpath(report))
        if taken is not None:
            raise UsageError(f"--report {report}: is also {taken}; choose another report path")


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Strict: a quote left open or text after a closing quote is an error, not a cell that
    # silently swallowed the rest of the file or lost its quotes.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    header = [name.strip() for name in (reader.fieldnames or [])]
    if not header:
        raise UsageError(f"{path}: empty job file (expected the header 'scene,question,output')")
    if sorted(header) != sorted(JOB_FIELDS):
        raise UsageError(
            f"{path}: line 1: the header must be 'scene,question,output' (got '{','.join(header)}')"
        )
    reader.fieldnames = header
    line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # an unclosed quote, a cell over the csv module's size limit
            raise UsageError(f"{path}: line {_next_row_line(text, line)}: not valid CSV ({exc}; a quoted cell "
                             f"must be quoted whole and its quote closed)") from None
        line = reader.line_num
        if None in row:  # more cells than the header has names
            raise UsageError(f"{path}: line {line}: more than 3 columns (quote a question that contains a comma)")
        if all((value or "").strip() == "" for value in row.values()):
            continue
        yield line, row


def _next_row_line(text: str, after: int) -> int:
    """The line where the row after line ``after`` starts: the next line that is not blank.
    (The csv reader's own count stops short of the row it failed on, and of blank lines.)"""
    lines = text.split("\n")
    number = after + 1
    while number <= len(lines) and not lines[number - 1].strip():
        number += 1
    return number


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Lines end at \n only (JSON Lines); str.splitlines() would also cut at U+2028, form
    # feeds and other separators that JSON strings may hold as they are.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: line {line}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise UsageError(f"{path}: line {line}: not valid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}: line {line}: expected an object with scene, question and output")
        extra = sorted(set(row) - set(JOB_FIELDS))
        if extra:
            raise UsageError(f"{path}: line {line}: unknown key(s) {', '.join(extra)} (expected scene, question, output)")
        yield line, row


def _looks_like_json_lines(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix in (".csv", ".tsv", ".txt"):
        return False
    first = next((line for line in text.split("\n") if line.strip()), "")
    return first.lstrip().startswith("{")


def read_jobs(path: Path | str) -> list[Job]:
    """Read a job file; relative paths are taken relative to the file's folder.

    Raises :class:`UsageError` naming the file and line for any malformed row, and for an
    output named by two different jobs (their results would overwrite each other).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{path}: job file not found") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the job file: {exc.strerror or exc}") from None

    base = path.resolve().parent
    rows = _jsonl_rows(path, text) if _looks_like_json_lines(path, text) else _csv_rows(path, text)

    jobs: dict[tuple[Path, str], dict[str, Any]] = {}
    # By real path: two spellings of one file (a symlinked folder) are one output.
    owner_of_output: dict[str, tuple[tuple[Path, str], int]] = {}
    for line, row in rows:
        where = f"{path}: line {line}"
        scene_text, question, output_text = (_clean_cell(row.get(key), key, where) for key in JOB_FIELDS)
        scene = _resolve(base, scene_text)
        output = _resolve(base, output_text)
        _check_output_kind(output, where)
        if output == scene:
            raise UsageError(f"{where}: the output is the scene itself ({output})")
        key = (scene, question)
        real_output = os.path.realpath(output)
        previous = owner_of_output.get(real_output)
        if previous is not None and previous[0] != key:
            raise UsageError(f"{where}: output {output} is also the output of a different job on line {previous[1]}")
        entry = jobs.setdefault(key, {"outputs": [], "lines": []})
        if previous is None:
            owner_of_output[real_output] = (key, line)
            entry["outputs"].append(output)
        entry["lines"].append(line)
    if not jobs:
        raise NoJobs(f"{path}: no jobs (expected rows of scene, question, output)")
    return [
        Job(number=index, scene=scene, question=question, outputs=tuple(entry["outputs"]), lines=tuple(entry["lines"]))
        for index, ((scene, question), entry) in enumerate(jobs.items(), start=1)
    ]


def _resolve(base: Path, text: str) -> Path:
    candidate = Path(os.path.expanduser(text))
    if not candidate.is_absolute():
        candidate = base / candidate
    # Normalise without following symlinks of the output (it may not exist yet).
    return Path(os.path.normpath(candidate))


def _check_output_kind(output: Path, where: str) -> None:
    from .query import OutputTarget

    try:
        OutputTarget.for_path(output)
    except SegearthError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def group_by_scene(jobs: Iterable[Job]) -> list[tuple[Path, list[Job]]]:
    """Jobs sharing a scene, in order of the scene's first appearance."""
    groups: dict[Path, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.scene, []).append(job)
    return list(groups.items())


# --------------------------------------------------------------------------- the record


def scene_identity(path: Path) -> dict[str, Any]:
    """What identifies a scene's content cheaply (see the module docstring for why)."""
    try:
        stat = path.stat()
        digest = hashlib.sha256(stat.st_size.to_bytes(8, "little"))
        with path.open("rb") as handle:
            digest.update(handle.read(_PARTIAL_HASH_SPAN))
            if stat.st_size > _PARTIAL_HASH_SPAN:
                handle.seek(max(_PARTIAL_HASH_SPAN, stat.st_size - _PARTIAL_HASH_SPAN))
                digest.update(handle.read(_PARTIAL_HASH_SPAN))
    except FileNotFoundError:
        raise InputError(f"{path}: scene not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a scene file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the scene: {exc.strerror or exc}") from None
    identity: dict[str, Any] = {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "partial_sha256": digest.hexdigest(),
    }
    sidecars = {}
    for suffix in SIDE_SUFFIXES:
        try:
            side = Path(str(path) + suffix).stat()
        except OSError:
            continue
        sidecars[suffix] = {"size": side.st_size, "mtime_ns": side.st_mtime_ns}
    if sidecars:
        identity["sidecars"] = sidecars
    return identity


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def options_record(options: Any) -> dict[str, Any]:
    """The query options that can change an output, as plain JSON values."""
    values = _jsonable(options)
    if not isinstance(values, dict):
        raise TypeError(f"query options must be a dataclass, not {type(options).__name__}")
    return {name: value for name, value in sorted(values.items()) if name not in OPTIONS_WITHOUT_EFFECT}


def job_inputs(
    scene: Mapping[str, Any], question: str, model: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``inputs`` object of a job's record."""
    return {
        "format": RECORD_FORMAT,
        "scene": dict(scene),
        "question": question,
        "model": dict(model),
        "options": dict(options),
        "tool": {"name": "segearth", "version": __version__},
    }


def record_path(output: Path) -> Path:
    return output.with_name(output.name + RECORD_SUFFIX)


def _load_record(output: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(the record beside ``output``, None), or (None, why it cannot be used: "is corrupt ...",
    "is not a segearth record ..."), or (None, None) when there is none."""
    try:
        data = json.loads(record_path(output).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"is corrupt ({first_line(exc)})"
    if not isinstance(data, dict) or data.get("segearth_record") != RECORD_FORMAT:
        return None, "is not a segearth record of this version"
    return data, None


def read_record(output: Path) -> Optional[dict[str, Any]]:
    """The record beside ``output``, or None when absent or unreadable (treated as absent)."""
    return _load_record(output)[0]


def write_record(output: Path, inputs: Mapping[str, Any], *, state: str, seconds: Optional[float] = None) -> None:
    data: dict[str, Any] = {
        "segearth_record": RECORD_FORMAT,
        "state": state,
        "inputs": dict(inputs),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if state == "complete":
        stat = output.stat()
        data["output"] = {"name": output.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if seconds is not None:
            data["seconds"] = round(seconds, 3)
    write_atomically(record_path(output), json.dumps(data, indent=2, sort_keys=True) + "\n")


def output_is_current(output: Path, inputs: Mapping[str, Any]) -> bool:
    """True when ``output`` exists and its complete record matches ``inputs`` and the file."""
    record = read_record(output)
    if record is None or record.get("state") != "complete" or record.get("inputs") != inputs:
        return False
    try:
        stat = output.stat()
    except OSError:
        return False
    written = record.get("output") or {}
    return written.get("size") == stat.st_size and written.get("mtime_ns") == stat.st_mtime_ns


def job_is_current(job: Job, inputs: Mapping[str, Any]) -> bool:
    return all(output_is_current(output, inputs) for output in job.outputs)


# --------------------------------------------------------------------------- running


@dataclass
class JobResult:
    """How one job ended. ``exit_code`` is 0 unless ``status`` is ``failed``."""

    job: Job
    status: str
    seconds: float = 0.0
    reason: Optional[str] = None
    error: Optional[str] = None
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """One line of the JSON Lines report."""
        return {
            "job": self.job.number,
            "lines": list(self.job.lines),
            "scene": str(self.job.scene),
            "question": self.job.question,
            "outputs": [str(p) for p in self.job.outputs],
            "status": self.status,
            "reason": self.reason,
            "error": self.error,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class BatchReport:
    results: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every job is ok or skipped, else the exit code of the first failed job."""
        failed = sorted((r for r in self.results if r.status == STATUS_FAILED), key=lambda r: r.job.number)
        return failed[0].exit_code if failed else EXIT_OK

    def counts(self) -> dict[str, int]:
        counts = {STATUS_OK: 0, STATUS_SKIPPED: 0, STATUS_FAILED: 0}
        for result in self.results:
            counts[result.status] += 1
        return counts


@dataclass(frozen=True)
class BatchSettings:
    """What every scene of a run shares; plain data, so it can travel to another process.

    ``options`` is the :class:`~segearth_cli.query.QueryOptions` applied to all jobs;
    ``options.overwrite`` allows replacing outputs that have no record (files not written
    by a batch run). ``model`` is the ``model_identity`` of the segmenter that will answer.
    ``force`` recomputes jobs whose record matches; ``wait`` waits for outputs locked by
    another run instead of skipping them.
    """

    options: Any
    model: Mapping[str, Any]
    force: bool = False
    wait: bool = False
    #: The model's input side when known before it loads: each scene's window plan is then
    #: checked (budget, --gsd) before the model is loaded for it.
    input_size: Optional[int] = None


#: Called with each job's result as soon as it is known (report lines stream, so a run that
#: is killed still leaves the lines of the jobs it finished).
ResultCallback = Callable[[JobResult], None]


def run_batch(
    jobs: Sequence[Job],
    segmenter: Any,
    options: Any,
    *,
    model: Mapping[str, Any],
    force: bool = False,
    wait: bool = False,
    on_result: Optional[ResultCallback] = None,
    input_size: Optional[int] = None,
) -> BatchReport:
    """Run every job; never raises for a job's failure (it becomes a ``failed`` result).

    ``segmenter`` is a Segmenter, or a function returning one: it is then called once,
    when the first job needs computing, so a run where every job is up to date never
    loads the model. The other arguments are those of :class:`BatchSettings`.
    """
    started = time.perf_counter()
    report = BatchReport()

    def emit(result: JobResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    settings = BatchSettings(options, model, force, wait, input_size)
    get_segmenter = LoadOnce(segmenter)
    groups = group_by_scene(jobs)
    current: Optional[_SceneGroup] = None
    upcoming: Optional[_SceneGroup] = None
    try:
        for index, (scene, scene_jobs) in enumerate(groups):
            current = upcoming or _SceneGroup.prepare(scene, scene_jobs, settings, wait=settings.wait)
            upcoming = None
            current.report_to(emit)
            current.start_reading(_known_input_size(settings, get_segmenter))
            if current.stale and index + 1 < len(groups):
                upcoming = _prepare_ahead(*groups[index + 1], settings, get_segmenter)
            current.compute(get_segmenter)
            current.close()
    finally:
        # An interrupt or a failure: the reader threads stop and the locks go, of both scenes.
        for group in (current, upcoming):
            if group is not None:
                group.close()
    report.results.sort(key=lambda r: r.job.number)
    report.seconds = time.perf_counter() - started
    return report


def _known_input_size(settings: BatchSettings, get_segmenter: "LoadOnce") -> Optional[int]:
    """The model's input side if it is known without loading the model, else None."""
    if settings.input_size is not None:
        return settings.input_size
    loaded = get_segmenter.loaded
    return None if loaded is None else int(loaded.input_size)


def _prepare_ahead(scene: Path, jobs: list[Job], settings: BatchSettings,
                   get_segmenter: "LoadOnce") -> Optional["_SceneGroup"]:
    """The next scene's group, prepared and reading its first windows while the current scene computes.

    None when it is better prepared at its turn: its windows cannot be planned before the
    model is known, or a waiting run found one of its outputs locked.
    """
    input_size = _known_input_size(settings, get_segmenter)
    if input_size is None:
        return None
    try:
        # Never wait for a lock while holding the current scene's: two runs, each holding the
        # outputs the other waits for, would wait for ever.
        group = _SceneGroup.prepare(scene, jobs, settings, wait=False)
    except Exception:  # noqa: BLE001 - met again at the group's turn, never in the current scene's
        return None
    try:
        if settings.wait and group.met_busy_lock:
            group.close()
            return None
        group.start_reading(input_size)
    except BaseException:
        group.close()
        raise
    return group


class LoadOnce:
    """Gives the segmenter, loading it on first use; a failed load fails every later use the same way."""

    def __init__(self, segmenter: Any):
        self._loader = segmenter if callable(segmenter) and not hasattr(segmenter, "segment") else None
        self._segmenter = None if self._loader is not None else segmenter
        self._error: Optional[BaseException] = None

    @property
    def loaded(self) -> Any:
        """The segmenter if it is there already, else None; never loads it."""
        return self._segmenter

    def __call__(self) -> Any:
        if self._segmenter is None:
            if self._error is not None:
                raise self._error
            try:
                self._segmenter = self._loader()
            except Exception as exc:
                self._error = exc
                raise
        return self._segmenter


def run_scene_group(
    scene: Path,
    jobs: list[Job],
    settings: BatchSettings,
    get_segmenter: Callable[[], Any],
    on_result: Optional[ResultCallback] = None,
) -> list[JobResult]:
    """The jobs of one scene: check their records, lock their outputs, compute them together, record.

    Never raises for a job's failure. ``get_segmenter()`` is called only when a job needs
    computing (a group that is up to date loads no model); if it raises, the jobs fail with
    its error. Results come back in the order they became known, each also passed to
    ``on_result`` at that moment. Nothing here depends on the process it runs in beyond
    the files it reads and writes.
    """
    group = _SceneGroup.prepare(scene, jobs, settings, wait=settings.wait, on_result=on_result)
    try:
        group.compute(get_segmenter)
    finally:
        group.close()
    return group.outcomes.results


class _SceneGroup:
    """The jobs of one scene between their record checks and their results.

    :meth:`prepare` checks the records and locks the outputs of the jobs that need
    computing (:attr:`stale`); :meth:`start_reading` may open the scene and start reading
    its windows before :meth:`compute` runs them; :meth:`close` releases everything,
    whether the group computed or not.
    """

    def __init__(self, scene: Path, settings: BatchSettings, on_result: Optional[ResultCallback]):
        self.scene = scene
        self.settings = settings
        self.outcomes = _Outcomes(on_result)
        self.inputs: dict[int, Any] = {}
        #: The jobs to compute, their outputs locked.
        self.stale: list[Job] = []
        self._locks: dict[Path, Any] = {}
        self._opened: Any = None

    @classmethod
    def prepare(cls, scene: Path, jobs: list[Job], settings: BatchSettings, *, wait: bool,
                on_result: Optional[ResultCallback] = None) -> "_SceneGroup":
        group = cls(scene, settings, on_result)
        outcomes = group.outcomes
        try:
            identity = scene_identity(scene)
        except SegearthError as exc:
            for job in jobs:
                outcomes.fail(job, exc)
            return group
        inputs = group.inputs = _jobs_inputs(identity, jobs, settings)
        stale = _not_current(jobs, inputs, settings, outcomes)
        stale = _prepare_folders(stale, outcomes)
        if not stale:
            return group
        group._locks = _lock_outputs(stale, wait, outcomes)
        try:
            stale = [job for job in stale if all(output in group._locks for output in job.outputs)]
            # Another run may have finished a job while this one waited for (or raced to) the lock.
            stale = _not_current(stale, inputs, settings, outcomes)
            group.stale = _refuse_foreign_outputs(stale, settings, outcomes)
        except BaseException:
            group.close()
            raise
        return group

    @property
    def met_busy_lock(self) -> bool:
        """Whether a job was skipped because another run holds one of its outputs."""
        return any((result.reason or "").startswith(REASON_LOCKED) for result in self.outcomes.results)

    def report_to(self, on_result: ResultCallback) -> None:
        self.outcomes.report_to(on_result)

    def start_reading(self, input_size: Optional[int]) -> None:
        """Open the scene and start reading the windows the jobs need for a model of ``input_size``.

        Nothing happens when no job needs computing, the input size is unknown (None), or the
        scene is already being read. A failure is left for :meth:`compute`, which meets it
        again and fails the jobs as it would have without reading ahead.
        """
        if not self.stale or input_size is None or self._opened is not None:
            return
        from .query import validate_query

        questions, targets, options = _request(self.stale, self.inputs, self.settings)
        try:
            opened = validate_query(self.scene, questions, targets, options, input_size=self.settings.input_size)
            try:
                opened.start_reading(input_size, options)
            except BaseException:
                opened.close()
                raise
        except Exception as exc:  # noqa: BLE001 - met again, and reported, when the group computes
            log.debug("%s: not read ahead: %s", self.scene.name, failure_line(exc))
            return
        self._opened = opened

    def compute(self, get_segmenter: Callable[[], Any]) -> None:
        if self.stale:
            _compute(self.scene, self.stale, self.inputs, self.settings, get_segmenter, self.outcomes, self._opened)

    def close(self) -> None:
        """Stop any reading, close the scene and release the locks."""
        if self._opened is not None:
            self._opened.close()
            self._opened = None
        for lock in self._locks.values():
            lock.release()
        self._locks = {}


class _Outcomes:
    """The results of one scene group, timed from its start, passed on as they become known."""

    def __init__(self, on_result: Optional[ResultCallback]):
        self.started = time.perf_counter()
        self.results: list[JobResult] = []
        self._on_result = on_result

    def report_to(self, on_result: ResultCallback) -> None:
        """Pass on the results known so far, and from now on each as it becomes known."""
        for result in self.results:
            on_result(result)
        self._on_result = on_result

    def add(self, result: JobResult) -> None:
        self.results.append(result)
        if self._on_result is not None:
            self._on_result(result)

    def fail(self, job: Job, exc: BaseException, seconds: Optional[float] = None) -> None:
        message = failure_line(exc)
        log.warning("job %d (%s, %r) failed: %s", job.number, job.scene.name, job.question, message)
        seconds = time.perf_counter() - self.started if seconds is None else seconds
        self.add(JobResult(job, STATUS_FAILED, seconds, error=message, exit_code=_exit_code(exc)))

    def skip(self, job: Job, reason: str) -> None:
        self.add(JobResult(job, STATUS_SKIPPED, time.perf_counter() - self.started, reason=reason))


def _exit_code(exc: BaseException) -> int:
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) and code > 0 else EXIT_FAILURE


def skip_current_jobs(identity: Mapping[str, Any], jobs: list[Job], settings: BatchSettings,
                      on_result: ResultCallback) -> list[Job]:
    """The jobs of the scene ``identity`` names that need computing; ``on_result`` gets the
    others as skipped, up to date (none when forced)."""
    return _not_current(jobs, _jobs_inputs(identity, jobs, settings), settings, _Outcomes(on_result))


def _jobs_inputs(identity: Mapping[str, Any], jobs: list[Job], settings: BatchSettings) -> dict[int, dict[str, Any]]:
    """Job number -> the ``inputs`` of its record."""
    recorded_options = options_record(settings.options)
    return {job.number: job_inputs(identity, job.question, settings.model, recorded_options) for job in jobs}


def _not_current(jobs: list[Job], inputs: Mapping[int, Any], settings: BatchSettings, outcomes: _Outcomes) -> list[Job]:
    """The jobs whose outputs need computing; the others are skipped as up to date (unless forced)."""
    if settings.force:
        return jobs
    remaining = []
    for job in jobs:
        if job_is_current(job, inputs[job.number]):
            outcomes.skip(job, REASON_UP_TO_DATE)
        else:
            remaining.append(job)
    return remaining


def _prepare_folders(jobs: list[Job], outcomes: _Outcomes) -> list[Job]:
    ready = []
    for job in jobs:
        try:
            for output in job.outputs:
                output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            outcomes.fail(job, OutputError(f"{output}: cannot create folder {output.parent}: {exc.strerror or exc}"))
            continue
        ready.append(job)
    return ready


def _lock_outputs(jobs: list[Job], wait: bool, outcomes: _Outcomes) -> dict[Path, Any]:
    """Lock every output of ``jobs`` in global path order; jobs with a busy output are skipped,
    jobs whose lock cannot be created (a full disk, a name too long) fail."""
    from .atomic import LockHeld, OutputLock

    locks: dict[Path, Any] = {}
    refused: dict[int, OutputError] = {}
    for output, job in sorted((output, job) for job in jobs for output in job.outputs):
        if job.number in refused:
            continue
        lock = OutputLock(output, wait=wait)
        try:
            lock.acquire()
        except OutputError as exc:
            refused[job.number] = exc
            continue
        locks[output] = lock
    for job in jobs:
        if job.number not in refused:
            continue
        for output in job.outputs:
            lock = locks.pop(output, None)
            if lock is not None:
                lock.release()
        reason = refused[job.number]
        if isinstance(reason, LockHeld):
            log.info("job %d: skipped, %s", job.number, reason.message)
            outcomes.skip(job, f"{REASON_LOCKED}: {reason.message}")
        else:
            outcomes.fail(job, reason)
    return locks


def _refuse_foreign_outputs(jobs: list[Job], settings: BatchSettings, outcomes: _Outcomes) -> list[Job]:
    if settings.options.overwrite or settings.force:
        return jobs
    allowed = []
    for job in jobs:
        foreign, problem = None, None
        for output in job.outputs:
            if os.path.lexists(output):
                record, problem = _load_record(output)
                if record is None:
                    foreign = output
                    break
        if foreign is None:
            allowed.append(job)
        elif problem is not None:
            outcomes.fail(job, OutputError(
                f"{foreign}: exists, and its record {record_path(foreign)} {problem}; "
                "pass --overwrite to replace both"
            ))
        else:
            outcomes.fail(job, OutputError(
                f"{foreign}: exists but was not written by segearth batch (no {RECORD_SUFFIX} record); "
                "pass --overwrite to replace it"
            ))
    return allowed


def _compute(scene: Path, jobs: list[Job], inputs: Mapping[int, Any], settings: BatchSettings,
             get_segmenter: Callable[[], Any], outcomes: _Outcomes, opened: Any = None) -> None:
    """``opened``: the scene as :func:`~segearth_cli.query.validate_query` opened it for ``jobs``, or None."""
    try:
        _query(scene, jobs, inputs, settings, get_segmenter, outcomes, opened)
    except _ModelFailed as failed:  # the model cannot answer any job
        for job in jobs:
            outcomes.fail(job, failed.error)
    except Exception as exc:  # noqa: BLE001 - a job's failure must not end the batch
        if len(jobs) > 1 and not isinstance(exc, (InputError, UsageError)):
            # Not the scene's fault: one job's output or question may be the cause, so
            # each job gets its own chance instead of failing together.
            log.info("%s: computing its %d jobs one by one after: %s", scene.name, len(jobs), failure_line(exc))
            for job in jobs:
                started = time.perf_counter()
                try:
                    _query(scene, [job], inputs, settings, get_segmenter, outcomes)
                except _ModelFailed as failed:
                    outcomes.fail(job, failed.error, time.perf_counter() - started)
                except Exception as alone:  # noqa: BLE001
                    outcomes.fail(job, alone, time.perf_counter() - started)
            return
        for job in jobs:
            outcomes.fail(job, exc)


class _ModelFailed(Exception):
    """The segmenter could not be had; ``error`` is why."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _request(jobs: list[Job], inputs: Mapping[int, Any], settings: BatchSettings) -> tuple[list[str], list[Any], Any]:
    """The questions, output targets and options of the one run_query that computes ``jobs``."""
    from .query import OutputTarget

    # Jobs of one scene have distinct questions (a job *is* a scene and a question).
    questions = [job.question for job in jobs]
    targets = []
    for index, job in enumerate(jobs):
        tags = {RECORD_TAG: json.dumps(inputs[job.number], sort_keys=True, ensure_ascii=False)}
        targets.extend(OutputTarget.for_path(o, question_indexes=(index,), tags=tags) for o in job.outputs)
    return questions, targets, dataclasses.replace(settings.options, overwrite=True)


def _query(scene: Path, jobs: list[Job], inputs: Mapping[int, Any], settings: BatchSettings,
           get_segmenter: Callable[[], Any], outcomes: _Outcomes, opened: Any = None) -> None:
    """One run_query for ``jobs``, with their records pending while it runs and complete after.

    The scene is opened (unless ``opened`` already is) and the request checked before the
    model is asked for, so a scene that cannot be read or planned costs no model load.
    """
    from .query import run_query, validate_query

    started = time.perf_counter()
    questions, targets, options = _request(jobs, inputs, settings)
    if opened is None:
        opened = validate_query(scene, questions, targets, options, input_size=settings.input_size)
    with opened:
        try:
            segmenter = get_segmenter()
        except Exception as exc:  # noqa: BLE001 - reported for every job of the group
            raise _ModelFailed(exc) from exc
        written: list[Path] = []
        try:
            for job in jobs:
                for output in job.outputs:
                    write_record(output, inputs[job.number], state="pending")
                    written.append(output)
            run_query(opened, questions, targets, segmenter, options)
        except BaseException:
            for output in written:
                if not os.path.lexists(output):
                    record_path(output).unlink(missing_ok=True)
            raise
    seconds = time.perf_counter() - started
    for job in jobs:
        try:
            for output in job.outputs:
                write_record(output, inputs[job.number], state="complete", seconds=seconds)
        except SegearthError as exc:
            outcomes.fail(job, exc, seconds)
            continue
        outcomes.add(JobResult(job, STATUS_OK, seconds))
