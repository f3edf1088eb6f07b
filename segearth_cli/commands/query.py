"""`segearth query SCENE QUESTION [-q QUESTION ...] -o OUT [-o OUT ...]`."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as opt
from .progress import StderrProgress
from ..errors import ModelUnavailableError, UsageError

log = logging.getLogger("segearth_cli.query")

TINY_RANDOM = "tiny-random"


def query_command(
    scene: Annotated[Path, typer.Argument(metavar="SCENE", help="A raster GDAL can read (GeoTIFF, COG, VRT, ...).",
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
    task: opt.Task = "auto",
    mode: opt.Mode = "auto",
    window: opt.WindowSize = None,
    gsd: opt.Gsd = None,
    overlap: opt.Overlap = None,
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
    from ..query import OutputTarget, run_query, validate_query

    options = opt.query_options(locals())
    started = time.perf_counter()
    questions = [question, *(more_questions or [])]
    targets = [OutputTarget.for_path(path) for path in output]
    validate_query(scene, questions, targets, options)

    load_started = time.perf_counter()
    segmenter = load_segmenter(model, revision=revision, device=device, dtype=dtype, task=task, quiet=quiet)
    load_seconds = time.perf_counter() - load_started

    with StderrProgress("windows", quiet=quiet) as progress:
        report = run_query(scene, questions, targets, segmenter, options, progress=progress)
    report.timings = {"load_model": round(load_seconds, 3), **report.timings,
                      "command": round(time.perf_counter() - started, 3)}

    if json_summary:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    if not quiet:
        _print_summary(report)


def resolve_task(task: str, model: str) -> str:
    task = task.lower()
    if task in ("reasoning", "referring"):
        return task
    if task != "auto":
        raise typer.BadParameter(f"{task!r}: choose auto, reasoning or referring", param_hint="--task")
    # The referring releases were trained on short descriptions with their own template.
    lowered = model.lower()
    return "referring" if ("rrsis" in lowered or "refsegrs" in lowered) else "reasoning"


def compute_dtype(device: str, dtype: str):
    """The torch dtype ``--device`` and ``--dtype`` resolve to; a combination that cannot run exits 2."""
    from segearth_model.checkpoint import resolve_device, resolve_dtype

    try:
        return resolve_dtype(dtype, resolve_device(device))
    except ValueError as exc:
        raise UsageError(f"--device {device} --dtype {dtype}: {exc}") from None


def load_segmenter(model: str, *, revision: Optional[str], device: str, dtype: str, task: str, quiet: bool,
                   official_numerics: bool = False):
    """Load the model behind the Segmenter interface; unavailable models exit 4 with a way out.

    ``official_numerics`` reproduces the weight rounding of the paper's evaluation (see
    ``segearth_model.load_pretrained``); ``segearth eval`` asks for it in float32.
    """
    task = resolve_task(task, model)
    import segearth_model
    from segearth_model.checkpoint import ModelLoadError
    from segearth_model.predictor import MaskPredictor

    from ..segmenter import ModelSegmenter

    compute_dtype(device, dtype)

    if model == TINY_RANDOM:
        log.warning("model 'tiny-random' has random weights: its answers are meaningless "
                    "(use it to try the pipeline, not to read the result)")
    elif not quiet:
        log.info("loading model %s%s", model, f" at {revision}" if revision else "")
    try:
        network, tokenizer = segearth_model.load_pretrained(model, revision=revision, device=device, dtype=dtype,
                                                            official_numerics=official_numerics)
    except ModelLoadError as exc:
        # The model package's messages already name the repo or file and how to get it.
        raise ModelUnavailableError(str(exc)) from exc
    return ModelSegmenter(MaskPredictor(network, tokenizer, task=task, name=model))


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
