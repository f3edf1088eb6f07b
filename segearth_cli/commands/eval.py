"""`segearth eval DATA_ROOT --dataset earthreason|rrsis-d|refsegrs --split val|test`."""

from __future__ import annotations

import json
import logging
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as opt
from .progress import StderrProgress

log = logging.getLogger("segearth_cli.eval")


class DatasetName(str, Enum):
    earthreason = "earthreason"
    rrsis_d = "rrsis-d"
    refsegrs = "refsegrs"


class SplitName(str, Enum):
    val = "val"
    test = "test"


def eval_command(
    data_root: Annotated[Path, typer.Argument(
        metavar="DATA_ROOT", show_default=False, parser=opt.file_name,
        help="Folder holding the data set: the split folders (EarthReason), output_phrase_<split>.txt with "
             "images/ and masks/ (RefSegRS), or rrsisd/ with images/rrsisd/JPEGImages (RRSIS-D). The official "
             "data_path/ with rs_reason_seg/ and rs_ref_seg/ works too.")],
    dataset: Annotated[DatasetName, typer.Option("--dataset", "-d", case_sensitive=False, show_default=False,
                                                 help="Which benchmark DATA_ROOT holds.")],
    split: Annotated[SplitName, typer.Option("--split", case_sensitive=False, help="Which split to score.")] = SplitName.val,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME|DIR", envvar="SEGEARTH_MODEL", show_default=False,
        help="Hugging Face repo id, local checkpoint directory or 'tiny-random'. Default: the released "
             "checkpoint for the data set (earth-insights/SegEarth-R1-EarthReason, -RRSIS-D, -RefSegRS).",
        rich_help_panel="Model")] = None,
    revision: opt.Revision = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, metavar="N", show_default=False,
                                                 help="Score only the first N samples (official order).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as one JSON object on stdout.",
                                           rich_help_panel="Reporting")] = False,
    per_sample: Annotated[Optional[Path], typer.Option(
        "--per-sample", metavar="FILE.csv", parser=opt.file_name, show_default=False, rich_help_panel="Reporting",
        help="Write one CSV row per sample: intersection, union and IoU under both protocols.")] = None,
    save_predictions: Annotated[Optional[Path], typer.Option(
        "--save-predictions", metavar="DIR", parser=opt.file_name, show_default=False, rich_help_panel="Reporting",
        help="Write each predicted mask as DIR/<image name>.png (0/255) on the padded square canvas the "
             "official protocol scores.")] = None,
    device: opt.Device = "auto",
    dtype: Annotated[str, typer.Option(
        "--dtype", metavar="DTYPE", rich_help_panel="Model",
        help="float32/fp32 (as the official evaluation, with its weight rounding), bfloat16/bf16, float16/fp16, mixed "
             "or auto (float16 on a GPU, float32 otherwise).")] = "float32",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, metavar="N", rich_help_panel="Model",
        help="Samples per model call, for models that take one question per image in a call; "
             "otherwise each sample runs alone.")] = 1,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,  # noqa: ARG001 - read by cli.main before parsing, listed here for --help
) -> None:
    """Score a model on a benchmark split with the paper's protocol, and on original-size masks."""
    from ..segmenter import check_device_and_dtype, model_limits

    check_device_and_dtype(device, dtype)
    from .. import evaluate as ev

    dataset_name = dataset.value
    split_name = split.value
    # Read and check the whole layout first: a misplaced file should fail in a second, not
    # after the model has loaded.
    samples = ev.read_dataset(data_root, dataset_name, split_name)
    ev.check_outputs(data_root, per_sample, save_predictions)
    model_name = model or ev.DATASET_MODEL[dataset_name]
    task = ev.DATASET_TASK[dataset_name]
    ev.check_questions(samples[:limit], model_limits(model_name, revision, task))
    if not quiet:
        log.info("%s %s: %d samples%s", dataset_name, split_name, len(samples),
                 f" (scoring the first {limit})" if limit is not None and limit < len(samples) else "")
    segmenter = load_eval_segmenter(model_name, task=task, revision=revision,
                                    device=device, dtype=dtype, quiet=quiet)

    total = min(len(samples), limit) if limit is not None else len(samples)
    with StderrProgress("samples", quiet=quiet, total=total, value_label="gIoU") as progress:
        report = ev.evaluate(samples, segmenter, dataset=dataset_name, split=split_name, limit=limit,
                             batch_size=batch_size, save_predictions=save_predictions, progress=progress)
    if per_sample is not None:
        ev.write_per_sample_csv(per_sample, report.samples)

    if json_out:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
        sys.stdout.flush()
    else:
        _print_table(report, model_name)


def load_eval_segmenter(model: str, *, task: str, revision: Optional[str], device: str, dtype: str, quiet: bool):
    """The model behind the Segmenter interface, with the data set's prompt template.

    A model that cannot be found, downloaded or read ends the command with exit status 4.
    """
    from ..segmenter import load_segmenter

    # float32, in any spelling, runs the official evaluation's weight rounding (bf16 -> fp16 -> fp32).
    return load_segmenter(model, revision=revision, device=device, dtype=dtype, task=task, quiet=quiet)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _print_table(report, model_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    official, original = report.official.summary(), report.original_size.summary()
    table = Table(title=f"{report.dataset} {report.split}, {report.n} samples, {model_name} (percent)")
    table.add_column("protocol")
    table.add_column("gIoU", justify="right")
    table.add_column("cIoU", justify="right")
    for threshold in official["precision_at"]:
        table.add_column(f"Pr@{threshold}", justify="right")
    for label, summary in (("official (padded canvas)", official), ("original_size", original)):
        table.add_row(label, _percent(summary["giou"]), _percent(summary["ciou"]),
                      *(_percent(v) for v in summary["precision_at"].values()))
    Console(soft_wrap=True).print(table)
