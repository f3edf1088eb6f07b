"""`segearth batch JOBS`: every row of a job file, one model load, idempotent reruns.

The job file format, the record that makes reruns skip finished work, the locks and the
exit status are described in ``segearth_cli/batch.py``.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional, TextIO

import typer

from ..errors import OutputError, UsageError
from ..windows import DEFAULT_MAX_WINDOWS
from . import options as opt

log = logging.getLogger("segearth_cli.batch")

# Prose lines carry no hard breaks: the help formatter wraps them to the terminal, and a
# break of ours would land in the middle of its lines.
BATCH_HELP = (
    "Run every job of JOBS with one model load; finished jobs are skipped on reruns.\n\n"
    "JOBS lists scene,question,output rows; relative paths are relative to JOBS, rows with the same scene "
    "share one pass over its windows, and the options apply to every job:\n\n"
    "    scene,question,output\n"
    "    scenes/a.tif,where are the buildings?,out/a_buildings.gpkg\n"
    "    scenes/a.tif,where are the buildings?,out/a_buildings.tif\n"
    "    scenes/a.tif,where is the water?,out/a_water.gpkg\n\n"
    "    segearth batch jobs.csv --report report.jsonl\n\n"
    "Exit status: 0 when every job succeeded or was skipped, otherwise the exit status of the first failed "
    "job in file order (3 unreadable scene, 4 model unavailable, 5 output not writable, 1 anything else); "
    "2 for a malformed job file.\n"
)


class _ReportWriter:
    """Writes one JSON line per job, flushed at once, to stdout (--json) and/or a file (--report)."""

    def __init__(self, to_stdout: bool, path: Optional[Path]):
        self.streams: list[TextIO] = [sys.stdout] if to_stdout else []
        self._file: Optional[TextIO] = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = path.open("w", encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
            self.streams.append(self._file)

    def write(self, line: dict) -> None:
        text = json.dumps(line, ensure_ascii=False) + "\n"
        for stream in self.streams:
            stream.write(text)
            stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def batch_command(
    jobs: Annotated[Path, typer.Argument(metavar="JOBS", parser=opt.file_name, show_default=False,
                                         help="CSV with the header scene,question,output, or JSON Lines with those keys.")],
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
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", rich_help_panel="Answer",
        help="Replace output files that were not written by segearth batch (they have no .segearth.json record).",
    )] = False,
    pixel_coordinates: opt.PixelCoordinates = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute every job, even those whose record matches.",
                                        rich_help_panel="Batch")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for outputs another run is writing instead of skipping "
                                       "them.", rich_help_panel="Batch")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", metavar="FILE", parser=opt.file_name,
                                                   show_default=False,
                                                   help="Write the JSON Lines report (one object per job) to FILE.",
                                                   rich_help_panel="Batch")] = None,
    json_report: Annotated[bool, typer.Option("--json", help="Write the JSON Lines report to stdout.",
                                              rich_help_panel="Reporting")] = False,
    engine: Annotated[str, typer.Option("--engine", metavar="local|ray", rich_help_panel="Engine",
                                        help="local: this process; ray: a pool of Ray workers, on this machine or "
                                        "a cluster (needs the ray extra: pip install 'segearth\\[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", metavar="ADDR", show_default=False,
                                                   rich_help_panel="Engine", callback=opt.non_empty,
                                                   help="Ray cluster to run on (default: RAY_ADDRESS, else the cluster "
                                                   "started on this machine, else a new local one).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option("--ray-workers", metavar="N", show_default=False,
                                                       rich_help_panel="Engine",
                                                       help="Ray workers, each with its own copy of the model "
                                                       "(default: one per GPU of the cluster, else one).")] = None,
    cpus_per_worker: Annotated[Optional[int], typer.Option("--cpus-per-worker", metavar="N",
                                                           show_default=False, rich_help_panel="Engine",
                                                           help="CPUs each Ray worker reserves (default: 1 with a "
                                                           "GPU, else an equal share of the cluster's CPUs).")] = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,  # noqa: ARG001 - read by cli.main before parsing, listed here for --help
) -> None:
    """Run every job of JOBS with one model load; the text users see is BATCH_HELP."""
    from ..batch import (STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, NoJobs, check_job_questions, check_paths,
                         read_jobs, run_batch)
    from ..segmenter import (check_device_and_dtype, compute_dtype, load_segmenter, model_identity, model_limits,
                             pinned_revision, resolve_task)

    check_device_and_dtype(device, dtype)
    options = opt.query_options(locals())
    _check_engine(engine, address=address, ray_workers=ray_workers, cpus_per_worker=cpus_per_worker)
    try:
        job_list = read_jobs(jobs)
    except NoJobs as empty:
        log.info("%s: nothing to do", empty.message)
        raise typer.Exit(0) from None
    options.check()
    task = resolve_task(task, model)
    check_paths(jobs, job_list, report)
    limits = model_limits(model, revision, task)
    check_job_questions(jobs, job_list, limits.check_questions)

    def model_for(run_device: str, precision: str):
        """The model identity the records hold, and a picklable loader, for where the model runs
        and the precision it computes in there."""
        identity = model_identity(model, revision, dtype=precision, task=task)
        # Load the very commit the records name, even if "main" moves while this run is going.
        load_revision = pinned_revision(model, revision, identity)

        def load():
            return load_segmenter(model, revision=load_revision, device=run_device, dtype=precision, task=task,
                                  quiet=quiet, identity=identity)

        return identity, load

    total = len(job_list)
    show_progress = not quiet and sys.stderr.isatty()

    def with_report(start):
        """``start(on_result=...)`` with every result written to the report as it comes."""
        writer = _ReportWriter(json_report, report)
        finished = 0

        def on_result(result) -> None:
            nonlocal finished
            finished += 1
            writer.write(result.to_dict())
            if show_progress:
                detail = result.reason or result.error or f"{result.seconds:.1f} s"
                print(f"[{finished}/{total}] {result.status:<7} {result.job.scene.name}: {result.job.question!r} "
                      f"({detail})", file=sys.stderr)

        try:
            return start(on_result=on_result)
        finally:
            writer.close()

    if engine == "ray":
        outcome = _run_on_ray(job_list, options, model_for, with_report, device=device, dtype=dtype,
                              address=address, workers=ray_workers, cpus_per_worker=cpus_per_worker, force=force,
                              wait=wait, input_size=limits.input_size)
    else:
        identity, load = model_for(device, compute_dtype(device, dtype))
        outcome = with_report(functools.partial(run_batch, job_list, load, options, model=identity, force=force,
                                                wait=wait, input_size=limits.input_size))

    counts = outcome.counts()
    if not quiet:
        log.info("%d job%s: %d ok, %d skipped, %d failed in %.1f s", total, "" if total == 1 else "s",
                 counts[STATUS_OK], counts[STATUS_SKIPPED], counts[STATUS_FAILED], outcome.seconds)
    if counts[STATUS_FAILED]:
        first = next(r for r in outcome.results if r.status == STATUS_FAILED)
        print(f"segearth: error: {counts[STATUS_FAILED]} job(s) failed; first: job {first.job.number} "
              f"(line {first.job.lines[0]}): {first.error}", file=sys.stderr)
    raise typer.Exit(outcome.exit_code)


def _check_engine(engine: str, **ray_options) -> None:
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine}: choose local or ray")
    given = [f"--{name.replace('_', '-')}" for name, value in ray_options.items() if value is not None]
    if engine == "local" and given:
        raise UsageError(f"{', '.join(given)}: only with --engine ray")
    for name in ("ray_workers", "cpus_per_worker"):
        value = ray_options.get(name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least 1")


def _run_on_ray(job_list, options, model_for, with_report, *, device: str, dtype: str, address: Optional[str],
                workers: Optional[int], cpus_per_worker: Optional[int], force: bool, wait: bool,
                input_size: Optional[int]):
    from ..ray_engine import RayCluster
    from ..segmenter import compute_dtype

    with RayCluster(address) as cluster:
        shape = cluster.worker_shape(device, workers, cpus_per_worker)
        # What "auto" means is up to the workers' GPUs, not the driver's: ask one. Every
        # worker then loads that dtype by name, so the records hold what was computed.
        resolve = functools.partial(compute_dtype, shape.device, dtype)
        precision = cluster.run_once(shape, resolve) if shape.gpus else resolve()
        identity, load = model_for(shape.device, precision)
        return with_report(functools.partial(cluster.run_batch, job_list, load, options, model=identity, shape=shape,
                                             force=force, wait=wait, input_size=input_size))
