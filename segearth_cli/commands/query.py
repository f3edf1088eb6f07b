"""`segearth query SCENE QUESTION [-q QUESTION ...] -o OUT [-o OUT ...]`."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Annotated, Optional

import typer

from ..windows import DEFAULT_MAX_WINDOWS
from . import options as opt
from .progress import StderrProgress

log = logging.getLogger("segearth_cli.query")


def query_command(
    scene: Annotated[str, typer.Argument(metavar="SCENE", help="A raster GDAL can read (GeoTIFF, COG, VRT, ...).",
                                          show_default=False)],
    question: Annotated[str, typer.Argument(metavar="QUESTION", help="What to find, in plain words.",
                                            show_default=False)],
    output: opt.Outputs,
    more_questions: Annotated[
        Optional[list[str]],
        typer.Option("--question", "-q", metavar="QUESTION",
                     help="Another question; one window pass answers all of them.", show_default=False),
    ] = None,
    model: opt.Model = opt.DEFAULT_MODEL,
    revision: opt.Revision = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    batch_size: opt.BatchSize = 4,
    workers: opt.Workers = None,
    task: opt.Task = "auto",
    mode: opt.Mode = "auto",
    window: opt.WindowSize = None,
    gsd: opt.Gsd = None,
    overlap: opt.Overlap = None,
    max_windows: opt.MaxWindows = DEFAULT_MAX_WINDOWS,
    bands: opt.Bands = None,
    threshold: opt.Threshold = 0.5,
    min_area: opt.MinArea = 0.0,
    simplify: opt.Simplify = 0.0,
    probabilities: opt.Probabilities = False,
    cog: opt.Cog = False,
    overwrite: opt.Overwrite = False,
    pixel_coordinates: opt.PixelCoordinates = False,
    json_summary: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,  # noqa: ARG001 - read by cli.main before parsing, listed here for --help
) -> None:
    from ..query import OutputTarget, check_plan, run_query, validate_query
    from ..segmenter import check_device_and_dtype, load_segmenter, model_limits, resolve_task

    if "\0" in scene:  # no file name can hold one; said as the argument, like a bad -o path
        raise typer.BadParameter("a file name cannot contain a NUL byte", param_hint="'SCENE'")
    check_device_and_dtype(device, dtype)
    resolve_task(task, model)
    options = opt.query_options(locals())
    started = time.perf_counter()
    questions = [question, *(more_questions or [])]
    targets = [OutputTarget.for_path(path) for path in output]
    with validate_query(scene, questions, targets, options) as opened:
        limits = model_limits(model, revision, task)
        limits.check_questions(questions)
        check_plan(opened, limits.input_size, options)
        load_started = time.perf_counter()
        segmenter = load_segmenter(model, revision=revision, device=device, dtype=dtype, task=task, quiet=quiet)
        load_seconds = time.perf_counter() - load_started
        with StderrProgress("windows", quiet=quiet) as progress:
            report = run_query(opened, questions, targets, segmenter, options, progress=progress)
    report.timings = {"load_model": round(load_seconds, 3), **report.timings,
                      "command": round(time.perf_counter() - started, 3)}

    if json_summary:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    if not quiet:
        _print_summary(report)


def _print_summary(report) -> None:
    for result in report.questions:
        if not result.found:
            log.info("%r: nothing found", result.question)
            continue
        parts = []
        if result.polygons is not None:
            parts.append(f"{result.polygons} polygon{'s' if result.polygons != 1 else ''}")
        if result.area_m2 is not None:
            parts.append(f"{result.area_m2:,.0f} m2")
        else:
            parts.append(f"{result.pixels} pixels")
        log.info("%r: %s", result.question, ", ".join(parts))
    for output in report.outputs:
        log.info("wrote %s", output["path"])
