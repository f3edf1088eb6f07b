"""One query from scene to committed outputs: the orchestration behind `segearth query`.

The scene is read once, window by window; every window goes through the segmenter once
for all questions, and every finished row block goes to every output. Outputs are written
to temporary files and renamed onto their targets only when all of them closed cleanly.

Usable without the command line::

    from segearth_cli.query import OutputTarget, QueryOptions, run_query
    report = run_query("scene.tif", ["where are the buildings?"],
                       [OutputTarget.for_path("roofs.gpkg")], segmenter, QueryOptions(mode="tiled"))

A caller that loads the model only once the request is known to be sound checks it first
and hands the opened scene on, so the scene is opened once::

    with validate_query("scene.tif", questions, targets, options) as scene:
        segmenter = load_the_model()
        report = run_query(scene, questions, targets, segmenter, options)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
import unicodedata
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Optional, Sequence

from .errors import UsageError, first_line, one_line
from .windows import DEFAULT_MAX_WINDOWS, check_gsd_measurable, check_window_options

if TYPE_CHECKING:  # the pipeline's heavy modules are imported when a query runs
    from .executor import ReadAhead
    from .inputs import InputFiles
    from .scene import SceneReader
    from .windows import WindowPlan

log = logging.getLogger(__name__)

#: Output kind for each extension a user may give (lower-cased).
KIND_BY_EXTENSION = {
    ".tif": "raster",
    ".tiff": "raster",
    ".gpkg": "gpkg",
    ".geojson": "geojson",
    ".json": "geojson",
    ".png": "png",
}
VECTOR_KINDS = ("gpkg", "geojson")

#: ``progress(windows_done, windows_total)``; skipped windows count as done.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class QueryOptions:
    mode: str = "auto"
    #: Tiled mode: window footprint in source pixels (None: the planner's default).
    window: Optional[int] = None
    #: Tiled mode: metres per model pixel; sets the footprint from the scene's resolution.
    gsd: Optional[float] = None
    #: Fraction of a window shared with each neighbour (None: the planner's default).
    overlap: Optional[float] = None
    #: 1-based source bands used as R,G,B (or one band as gray); None chooses by colour interpretation.
    bands: Optional[tuple[int, ...]] = None
    #: Probability above which a pixel answers the question (0.5 is logit 0).
    threshold: float = 0.5
    min_area: float = 0.0
    simplify: float = 0.0
    probabilities: bool = False
    cog: bool = False
    overwrite: bool = False
    batch_size: int = 4
    pixel_coordinates: bool = False
    #: Threads reading windows ahead of the model (None: one per core, see executor.default_workers).
    workers: Optional[int] = None
    #: A plan of more windows than this is refused before any work (see windows.DEFAULT_MAX_WINDOWS).
    max_windows: int = DEFAULT_MAX_WINDOWS

    def check(self) -> None:
        """Raise UsageError for settings no scene could satisfy: the one place they are validated."""
        for option, value in (("--gsd", self.gsd), ("--overlap", self.overlap), ("--threshold", self.threshold),
                              ("--min-area", self.min_area), ("--simplify", self.simplify)):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{option} {value}: give a finite number")
        check_window_options(self.mode, self.window, self.gsd, self.overlap)
        if self.bands is not None:
            from .scene import check_band_choice

            check_band_choice(self.bands)
        if not 0.0 < self.threshold < 1.0:
            raise UsageError(f"--threshold {self.threshold}: must be a probability strictly between 0 and 1")
        if self.min_area < 0 or self.simplify < 0:
            raise UsageError("--min-area and --simplify cannot be negative")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if self.max_windows < 1:
            raise UsageError(f"--max-windows {self.max_windows}: must be at least 1")


@dataclass(frozen=True)
class OutputTarget:
    path: Path
    kind: str
    #: Which questions (indexes into the question list) this output answers; None: all.
    question_indexes: Optional[tuple[int, ...]] = None
    #: Extra dataset tags for a GeoTIFF output (provenance records); ignored by other kinds.
    tags: Optional[Mapping[str, object]] = None

    @classmethod
    def for_path(
        cls,
        path: "str | os.PathLike[str]",
        question_indexes: Optional[Sequence[int]] = None,
        tags: Optional[Mapping[str, object]] = None,
    ) -> "OutputTarget":
        path = Path(path)
        kind = KIND_BY_EXTENSION.get(path.suffix.lower())
        if kind is None:
            known = ", ".join(sorted(KIND_BY_EXTENSION))
            raise UsageError(f"{path}: unknown output type {path.suffix or '(no extension)'!r}; use one of {known}")
        return cls(path, kind, None if question_indexes is None else tuple(question_indexes),
                   None if tags is None else dict(tags))

    def questions(self, all_questions: Sequence[str]) -> list[str]:
        if self.question_indexes is None:
            return list(all_questions)
        return [all_questions[i] for i in self.question_indexes]


@dataclass
class QuestionResult:
    question: str
    found: bool
    #: Polygons of the answer after --min-area (counted even when no vector output is written).
    polygons: int
    #: Total area of those polygons in square metres; None for a scene without a CRS.
    area_m2: Optional[float]
    #: Scene pixels inside those polygons.
    pixels: int


@dataclass
class QueryReport:
    scene: str
    model: str
    outputs: list[dict]
    questions: list[QuestionResult]
    found: bool
    windows_total: int
    windows_run: int
    windows_skipped: int
    mode: str
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OpenedScene:
    """A scene checked against a request and open for reading, as :func:`validate_query` returns it.

    Close it (or use it in a ``with`` block) once the query ran.
    """

    reader: "SceneReader"
    #: The scene path as the caller gave it, for messages and the report.
    label: str
    #: Seconds the open took (band choice, georeferencing, stretch measurement).
    seconds: float
    #: Warnings raised while opening, reported with the run's own.
    warnings: list[str]
    #: Every file the scene reads (its VRT sources, side files), which no output may be.
    inputs: "InputFiles"
    #: Windows being read before the query runs (see :meth:`start_reading`).
    _reads: Optional["ReadAhead"] = field(default=None, repr=False)

    def start_reading(self, input_size: int, options: QueryOptions) -> None:
        """Start reading the windows that a query with ``options`` will need, in background threads.

        For a caller whose model is still busy (with another scene, or loading): the query
        then finds its first windows read. ``input_size`` is the model's; a query run with
        another model, or other window options, reads its windows anew. Raises what planning
        the windows or opening the readers' handles raises.
        """
        from .executor import ReadAhead

        self.stop_reading()
        # Not timed: the query plans again to check these are its windows, and times that.
        plan = _plan(self.reader.scene, input_size, options)
        self._reads = ReadAhead(self.reader, plan, workers=options.workers, batch_size=options.batch_size,
                                clock=_Clock())

    def stop_reading(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None

    def _take_reads(self, plan: "WindowPlan") -> Optional["ReadAhead"]:
        """The windows being read, if they are those of ``plan``; other reads are stopped."""
        reads, self._reads = self._reads, None
        if reads is not None and reads.plan != plan:
            reads.close()
            return None
        return reads

    def close(self) -> None:
        self.stop_reading()
        self.reader.close()

    def __enter__(self) -> "OpenedScene":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def validate_query(
    scene_path: "str | os.PathLike[str]",
    questions: Sequence[str],
    targets: Sequence[OutputTarget],
    options: QueryOptions,
    input_size: Optional[int] = None,
) -> OpenedScene:
    """Check everything that can be checked before the model is loaded, and open the scene.

    Raises a SegearthError. Pass the returned scene to :func:`run_query` so it is not
    opened twice; the command line checks first so that a typo costs no model load.
    ``input_size``, the model's input side when known, lets the window plan be checked
    too (its budget, a ``--gsd`` too fine for the scene).
    """
    inputs = _check_request(scene_path, questions, targets, options)
    from .scene import open_scene  # after the checks: a refusal should not wait for GDAL to load

    started = time.perf_counter()
    with _recorded_warnings() as caught:
        reader = open_scene(scene_path, bands=options.bands)
    opened = OpenedScene(reader, str(scene_path), time.perf_counter() - started, [str(w.message) for w in caught],
                         inputs)
    try:
        reader.check_ends_readable()
        _check_against_scene(reader.scene, scene_path, targets, options)
        if input_size is not None:
            check_plan(opened, input_size, options)
    except BaseException:
        opened.close()
        raise
    return opened


def run_query(
    scene: "str | os.PathLike[str] | OpenedScene",
    questions: Sequence[str],
    targets: Sequence[OutputTarget],
    segmenter,
    options: QueryOptions = QueryOptions(),
    progress: Optional[ProgressCallback] = None,
) -> QueryReport:
    """Answer ``questions`` about the scene and commit every target; see the module docstring.

    ``scene`` is a path, or the :class:`OpenedScene` that :func:`validate_query` returned
    for the same request (it stays open; its owner closes it). Raises a SegearthError
    (exit code attached) for bad input, options or outputs; nothing is left at any target
    path after a failure or an interruption.
    """
    questions = list(questions)
    targets = list(targets)
    if not isinstance(scene, OpenedScene):
        with validate_query(scene, questions, targets, options) as opened:
            return _run(opened, questions, targets, segmenter, options, progress)
    # Cheap to repeat, and the outputs may have appeared while the model loaded; the scene's
    # files were found when it was opened.
    _check_request(scene.label, questions, targets, options, scene.inputs)
    _check_against_scene(scene.reader.scene, scene.label, targets, options)
    return _run(scene, questions, targets, segmenter, options, progress)


def _check_request(
    scene_path: "str | os.PathLike[str]", questions: Sequence[str], targets: Sequence[OutputTarget], options: QueryOptions,
    inputs: Optional["InputFiles"] = None,
) -> "InputFiles":
    """The checks that need neither the scene's contents nor the model; the files the scene
    reads (``inputs`` when already found)."""
    from .inputs import scene_inputs

    options.check()
    _check_questions(questions)
    if inputs is None:
        inputs = scene_inputs(scene_path)
    _check_targets(inputs, questions, targets, options.overwrite)
    return inputs


def question_problem(question: object) -> Optional[str]:
    """What makes ``question`` unusable as a question, or None.

    Control characters (NUL, escape sequences, bells, C1 codes) are refused rather than
    passed on: they are invisible in logs and records, cut text at a NUL in some formats,
    and no one types them on purpose.
    """
    # Format characters alone (zero-width spaces, a byte-order mark) show as nothing.
    if not isinstance(question, str) or all(c.isspace() or unicodedata.category(c) == "Cf" for c in question):
        return "is empty"
    control = next((c for c in question if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return f"contains the control character U+{ord(control):04X}; a question is plain text"
    return None


def _check_questions(questions: Sequence[str]) -> None:
    if not questions:
        raise UsageError("no question given")
    first_seen: dict[str, int] = {}
    for number, question in enumerate(questions, start=1):
        problem = question_problem(question)
        if problem == "is empty":
            raise UsageError("a question is empty")
        if problem is not None:
            raise UsageError(f"question {number} {shown_question(question)} {problem}")
        earlier = first_seen.setdefault(question.strip(), number)
        if earlier != number:
            raise UsageError(f"question {number} {shown_question(question)} repeats question {earlier}; "
                             "ask each question once")


def shown_question(question: str, limit: int = 60) -> str:
    """The question quoted for a one-line message: escaped, and cut when long."""
    text = question if len(question) <= limit else question[:limit] + "..."
    return repr(text)


def _check_targets(
    inputs: "InputFiles", questions: Sequence[str], targets: Sequence[OutputTarget], overwrite: bool
) -> None:
    if not targets:
        raise UsageError("no output given: add -o OUT (.tif, .gpkg, .geojson or .png)")
    from .atomic import check_name_fits, check_target_writable

    seen: set[str] = set()
    for target in targets:
        check_name_fits(target.path)
        resolved = os.path.realpath(target.path)
        if resolved in seen:
            raise UsageError(f"{target.path}: given twice as an output")
        seen.add(resolved)
        refuse_input_as_output(inputs, target.path)
        if target.question_indexes is not None:
            bad = [i for i in target.question_indexes if not 0 <= i < len(questions)]
            if bad or not target.question_indexes:
                raise UsageError(f"{target.path}: question indexes {list(target.question_indexes)} do not fit "
                                 f"{len(questions)} question(s)")
        check_target_writable(target.path, overwrite)


def refuse_input_as_output(inputs: "InputFiles", path: "str | os.PathLike[str]", role: str = "") -> None:
    """UsageError when ``path`` (an output, record, lock or report) is one of the run's inputs."""
    held = inputs.holding(path)
    if held is not None:
        what = "the input scene" if os.path.realpath(held) == os.path.realpath(path) else f"the input {held}"
        raise UsageError(f"{path}: {role}is {what} (inputs are never overwritten, whatever --overwrite says); "
                         "choose another path")


def check_plan(opened: OpenedScene, input_size: int, options: QueryOptions) -> None:
    """UsageError when the windows of the scene cannot be planned for a model input of
    ``input_size``: a plan over ``options.max_windows``, a ``--gsd`` finer than the scene.
    The message names the scene: in a batch, it is one job's among many."""
    try:
        _plan(opened.reader.scene, input_size, options)
    except UsageError as exc:
        if exc.message.startswith(f"{opened.label}: "):
            raise
        raise UsageError(f"{opened.label}: {exc.message}") from None


def _plan(scene, input_size: int, options: QueryOptions) -> "WindowPlan":
    from .windows import plan_windows

    return plan_windows(scene, options.mode, input_size, options.window, options.gsd, options.overlap,
                        max_windows=options.max_windows)


def _check_against_scene(scene, scene_path, targets: Sequence[OutputTarget], options: QueryOptions) -> None:
    georeferenced = scene.georeferenced
    has_crs = georeferenced and scene.crs is not None
    vectors = [t for t in targets if t.kind in VECTOR_KINDS]
    if vectors and not georeferenced and not options.pixel_coordinates:
        raise UsageError(
            f"{scene_path}: has no georeferencing, so {vectors[0].path} would have no map coordinates; "
            "pass --pixel-coordinates to write polygons in pixel units (col, row)"
        )
    geojson = [t for t in targets if t.kind == "geojson"]
    if geojson and not has_crs:
        raise UsageError(
            f"{geojson[0].path}: GeoJSON is lon/lat (RFC 7946), but {scene_path} has no coordinate reference "
            "system; write a .gpkg instead"
        )
    if vectors and not has_crs and (options.min_area > 0 or options.simplify > 0):
        raise UsageError(
            f"{scene_path}: has no coordinate reference system, so --min-area and --simplify (metres) cannot be measured"
        )
    if has_crs and (vectors or options.min_area > 0 or options.simplify > 0):
        _check_crs_for_vectors(scene, scene_path, vectors, geojson)
    check_gsd_measurable(scene, options.gsd)


def _check_crs_for_vectors(scene, scene_path, vectors: Sequence[OutputTarget], geojson: Sequence[OutputTarget]) -> None:
    """Refuse, before any window runs, outputs whose lon/lat or metres PROJ cannot compute for this CRS."""
    from .outputs.vectors import area_problem, wgs84_problem

    crs_name = _crs_name(scene.crs)
    problem = wgs84_problem(scene) if geojson else None
    if problem is not None:
        raise UsageError(
            f"{geojson[0].path}: GeoJSON is WGS 84 lon/lat, but PROJ cannot transform the CRS of {scene_path} "
            f"({crs_name}) to WGS 84 ({problem}); write a .gpkg or .tif instead"
        )
    problem = area_problem(scene)
    if problem is not None:
        where = vectors[0].path if vectors else scene_path
        raise UsageError(
            f"{where}: areas in m2 (polygon areas, --min-area, --simplify) cannot be measured in the CRS of "
            f"{scene_path} ({crs_name}): PROJ says {problem}; write a .tif instead"
        )


def _crs_name(crs) -> str:
    import pyproj

    try:
        return pyproj.CRS.from_user_input(crs.to_wkt()).name
    except pyproj.exceptions.CRSError:
        return crs.to_string()


@contextmanager
def _recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings a user should hear about (GDAL and rasterio's above all) for the summary.

    Deprecations are for developers and stay silent.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield caught


def _run(opened: OpenedScene, questions: list[str], targets: list[OutputTarget], segmenter,
         options: QueryOptions, progress: Optional[ProgressCallback]) -> QueryReport:
    """The query on a checked, open scene: plan, stream every window into every output, commit."""
    # The open belongs to the query even when it happened before the model was loaded.
    started = time.perf_counter() - opened.seconds
    clock = _Clock()
    clock.add("open", opened.seconds)
    _remove_stale_temps(targets)
    scene = opened.reader.scene
    notes = [] if scene.georeferenced else [f"{opened.label}: has no georeferencing; outputs are in pixel coordinates"]
    vectors = [t for t in targets if t.kind in VECTOR_KINDS]
    if vectors and scene.georeferenced and scene.crs is None:
        notes.append(f"{opened.label}: has a geotransform but no coordinate reference system; the polygons of "
                     f"{vectors[0].path} are in its grid units, which no GIS can place on a map")
    with _recorded_warnings() as caught:
        with clock("plan"):
            plan = _plan(scene, segmenter.input_size, options)
        reads = opened._take_reads(plan)
        try:
            if reads is not None:
                plan = reads.plan
            log.info("%s: %d x %d px, %s (%d window%s)", scene.name, scene.width, scene.height, plan.reason,
                     len(plan), "" if len(plan) == 1 else "s")
            counter = _WindowCounter(len(plan), progress)
            sinks = _write_outputs(opened.reader, plan, questions, targets, segmenter, options, clock, counter, reads)
        finally:
            if reads is not None:
                reads.close()
                clock.add_all(reads.clock)
    messages = _unique_messages([*notes, *opened.warnings, *(str(w.message) for w in caught)])
    for message in messages:
        log.warning("%s", message)
    results = _question_results(questions, sinks.summaries())
    clock.add("total", time.perf_counter() - started)
    return QueryReport(
        scene=opened.label,
        model=segmenter.name,
        outputs=[{"path": str(t.path), "kind": t.kind, "questions": t.questions(questions)} for t in targets],
        questions=results,
        found=any(r.found for r in results),
        windows_total=len(plan),
        windows_run=counter.run,
        windows_skipped=counter.skipped,
        mode=plan.mode,
        timings={phase: round(seconds, 3) for phase, seconds in clock.seconds.items()},
        warnings=messages,
    )


def _remove_stale_temps(targets: Sequence[OutputTarget]) -> None:
    """Temporaries of runs that were killed (SIGKILL, power loss) are never at a target
    path, but they would pile up in the output folders."""
    from .atomic import remove_stale_temps

    # Temporaries sit beside the target's own name (a symlink at the target is replaced,
    # not followed), so the folder is the name's, whatever the name points to.
    for folder in {os.path.realpath(t.path.parent) for t in targets}:
        for stale in remove_stale_temps(folder):
            log.debug("removed %s, left by a run that was killed", stale)


def _write_outputs(reader: "SceneReader", plan: "WindowPlan", questions: list[str], targets: list[OutputTarget],
                   segmenter, options: QueryOptions, clock: "_Clock", counter: "_WindowCounter",
                   reads: Optional["ReadAhead"]) -> "_Sinks":
    """Stream the plan into a sink per target, then commit them all together."""
    from .atomic import AtomicOutputs

    with AtomicOutputs([t.path for t in targets], overwrite=options.overwrite) as atomic:
        sinks = _Sinks(reader, questions, targets, atomic, options, segmenter.name)
        try:
            counter.start()
            _stream(reader, plan, questions, segmenter, options, sinks, clock, counter, reads)
            with clock("finish"):
                sinks.close()
        except Exception as exc:
            failure = _write_failure(exc, targets, atomic)
            sinks.abort()
            if failure is exc:
                raise
            raise failure from None
        except BaseException:
            sinks.abort()
            raise
        commit_started = time.perf_counter()
    clock.add("commit", time.perf_counter() - commit_started)
    return sinks


def _write_failure(exc: Exception, targets: Sequence[OutputTarget], atomic) -> Exception:
    """The error to report for a failure while writing: named after the user's target, never
    the hidden temporary, with the operating system's reason (a full disk above all).

    Called before the temporaries are deleted, so a probe finds the disk as full as the
    failed write did. Errors of the input or the model pass through unchanged.
    """
    from .atomic import write_failure_reason
    from .errors import InputError, ModelUnavailableError, OutputError, SegearthError, UsageError

    if isinstance(exc, (InputError, ModelUnavailableError, UsageError)):
        return exc
    renamed = str(exc)
    for target in targets:
        temp = atomic.temp_path(target.path)
        renamed = renamed.replace(str(temp), str(target.path)).replace(temp.name, target.path.name)
    for target in targets:
        reason = write_failure_reason(atomic.temp_path(target.path), exc)
        if isinstance(exc, OSError) or reason != first_line(exc):
            return OutputError(f"{target.path}: cannot be written ({reason})")
    if isinstance(exc, SegearthError):
        return OutputError(renamed) if isinstance(exc, OutputError) else exc
    return exc


def _stream(reader: "SceneReader", plan: "WindowPlan", questions: list[str], segmenter, options: QueryOptions,
            sinks: "_Sinks", clock: "_Clock", counter: "_WindowCounter", reads: Optional["ReadAhead"]) -> None:
    from .executor import run_plan

    native_validity = _validity_is_approximate(reader.scene, plan)

    def write(block) -> None:
        if native_validity:
            block = _with_native_validity(block, reader, clock)
        with clock("write"):
            sinks.write(block)

    run_plan(reader, plan, segmenter, questions, write, batch_size=options.batch_size, workers=options.workers,
             on_window=counter, clock=clock, reads=reads)


def _question_results(questions: Sequence[str], summaries: Sequence) -> list[QuestionResult]:
    return [
        QuestionResult(
            question=question,
            found=summary.polygon_count > 0,
            pixels=summary.pixel_count,
            polygons=summary.polygon_count,
            area_m2=None if summary.total_area_m2 is None else round(float(summary.total_area_m2), 3),
        )
        for question, summary in zip(questions, summaries)
    ]


class _WindowCounter:
    """``on_window`` of the executor: counts windows run and skipped, reports progress."""

    def __init__(self, total: int, progress: Optional[ProgressCallback]):
        self.total = total
        self.progress = progress
        self.run = 0
        self.skipped = 0

    def start(self) -> None:
        if self.progress is not None:
            self.progress(0, self.total)

    def __call__(self, window, ran_model: bool) -> None:
        if ran_model:
            self.run += 1
        else:
            self.skipped += 1
        if self.progress is not None:
            self.progress(self.run + self.skipped, self.total)


class _Clock:
    """Seconds per phase; ``with clock("phase"):`` adds the block's duration to it (nesting allowed).

    Phases that run in several threads at once (reading, the model) add up every thread's time.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def add_all(self, other: "_Clock") -> None:
        for phase, seconds in other.seconds.items():
            self.add(phase, seconds)


def _validity_is_approximate(scene, plan) -> bool:
    """Whether resampled windows leave the stitched validity short of the file's own."""
    can_be_invalid = scene.validity != "none" or scene.colour == "palette" or scene.dtype.startswith("float")
    return can_be_invalid and any(not window.native for window in plan)


def _with_native_validity(block, reader, clock: _Clock):
    """The row block with a validity that also excludes every invalid pixel of the file itself."""
    from .stitch import RowBlock

    with clock("read"):
        native = reader.read_valid_rows(block.row_off, block.height)
    return RowBlock(block.row_off, block.probabilities, block.valid & native)


def _unique_messages(texts: Sequence[str]) -> list[str]:
    """Our own notes and the warnings raised during the run, each once, one line each."""
    seen: dict[str, None] = {}
    for text in texts:
        line = one_line(text)
        if line:
            seen.setdefault(line, None)
    return list(seen)


def _measurable(scene):
    """``scene``, or a copy without its CRS when PROJ cannot measure areas in it.

    Only the summary's collector needs this: outputs that would hold areas were refused
    before the run, so the GeoTIFF alone still works, with no areas in the summary.
    """
    from .outputs.vectors import area_problem

    problem = area_problem(scene)
    if problem is None:
        return scene
    log.warning("%s: no areas in the summary: PROJ cannot measure in its CRS (%s)", scene.path, problem)
    return dataclasses.replace(scene, crs=None)


class _Sinks:
    """Every output of one run, fed the same row blocks.

    Vector outputs answering the same questions share one polygon collector, which also
    provides the per-question polygon count and area of the run summary; questions no
    vector output covers get a collector of their own that writes nothing.
    """

    def __init__(self, reader, questions: Sequence[str], targets: Sequence[OutputTarget], atomic,
                 options: QueryOptions, model: str):
        scene = reader.scene
        from .outputs.raster import MaskRasterSink
        from .outputs.vectors import VectorSink

        self.rasters: list = []
        self.previews: list = []
        self.vectors: dict[Optional[tuple[int, ...]], object] = {}
        self.vector_targets: list[tuple[OutputTarget, Path, object]] = []
        pixel_coordinates = not scene.georeferenced
        has_crs = scene.georeferenced and scene.crs is not None
        attributes = {"scene": Path(scene.path).name, "model": model}
        try:
            for target in targets:
                temp = atomic.temp_path(target.path)
                if target.kind == "raster":
                    self.rasters.append(MaskRasterSink(
                        temp, scene, questions, target.question_indexes, threshold=options.threshold,
                        probabilities=options.probabilities, cog=options.cog, tags=target.tags, model=model,
                    ))
                elif target.kind in VECTOR_KINDS:
                    sink = self.vectors.get(target.question_indexes)
                    if sink is None:
                        sink = self.vectors[target.question_indexes] = VectorSink(
                            scene, questions, target.question_indexes, threshold=options.threshold,
                            min_area_m2=options.min_area, simplify_m=options.simplify, attributes=attributes,
                            pixel_coordinates=pixel_coordinates,
                        )
                    self.vector_targets.append((target, temp, sink))
                elif target.kind == "png":
                    from .outputs.preview import PreviewSink

                    self.previews.append(PreviewSink(temp, reader, questions, target.question_indexes,
                                                     threshold=options.threshold))
            covered = {i for key in self.vectors for i in (range(len(questions)) if key is None else key)}
            missing = tuple(i for i in range(len(questions)) if i not in covered)
            if missing:
                # Only for the summary: the same rule as the written polygons, metres only with a CRS.
                summary_scene = _measurable(scene) if has_crs else scene
                has_crs = summary_scene.crs is not None
                self.vectors[missing] = VectorSink(
                    summary_scene, questions, missing, threshold=options.threshold,
                    min_area_m2=options.min_area if has_crs else 0.0, attributes=attributes,
                    pixel_coordinates=pixel_coordinates,
                )
        except BaseException:
            self.abort()
            raise
        self.questions = list(questions)

    def _all(self) -> list:
        return [*self.rasters, *self.vectors.values(), *self.previews]

    def write(self, block) -> None:
        for sink in self._all():
            sink.write(block)

    def close(self) -> None:
        for sink in self._all():
            sink.close()
        for target, temp, sink in self.vector_targets:
            if target.kind == "gpkg":
                sink.write_gpkg(temp)
            else:
                sink.write_geojson(temp)

    def abort(self) -> None:
        """Release open files; AtomicOutputs deletes the temporaries themselves."""
        for sink in [*self.rasters, *self.previews]:
            try:
                sink.abort()
            except Exception:  # noqa: BLE001 - the original failure is what the user must see
                log.debug("ignored a failure while discarding %s", sink, exc_info=True)

    def summaries(self) -> list:
        """Per question (in question order) the QuestionSummary of a collector covering it."""
        by_question: dict[int, object] = {}
        for sink in self.vectors.values():
            for summary, index in zip(sink.summary(), sink.question_indexes):
                by_question.setdefault(index, summary)
        return [by_question[i] for i in range(len(self.questions))]
