"""Command-line options shared by several commands, each defined once.

Commands declare a parameter with one of these ``Annotated`` types and a default, so the
spelling and help text of an option are the same wherever it appears. Values are checked
where they are used (:meth:`segearth_cli.query.QueryOptions.check` for the query options),
not here, so a library caller gets the same checks as the command line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Mapping, Optional

import typer

from ..errors import UsageError

if TYPE_CHECKING:  # the pipeline is imported only when a command runs, to keep --help fast
    from ..query import QueryOptions

DEFAULT_MODEL = "earth-insights/SegEarth-R1-EarthReason"


def file_name(text: str) -> Path:
    """A path argument as typed. Parsed here rather than by the option library, whose older
    releases stat the path and crash on a NUL byte instead of refusing it."""
    if "\0" in text:
        raise typer.BadParameter("a file name cannot contain a NUL byte")
    return Path(text)


_MODEL_PANEL = "Model"
_WINDOW_PANEL = "Windows"
_ANSWER_PANEL = "Answer"
_REPORT_PANEL = "Reporting"


def parse_bands(value: Optional[str]) -> Optional[tuple[int, ...]]:
    """``"4,3,2"`` -> ``(4, 3, 2)``; how many bands make sense is QueryOptions' to say."""
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise UsageError(f"--bands {value!r}: give band numbers separated by commas, e.g. 4,3,2") from None


def query_options(parameters: Mapping[str, Any]) -> "QueryOptions":
    """The QueryOptions of a command whose parameters carry the field names (pass ``locals()``).

    ``query`` and ``batch`` declare the same options; building QueryOptions from the names
    keeps one conversion (mode case, band list) for both, so the two cannot drift apart.
    """
    from ..query import QueryOptions

    values = {f.name: parameters[f.name] for f in dataclasses.fields(QueryOptions) if f.name in parameters}
    values["mode"] = values["mode"].lower()
    values["bands"] = parse_bands(values["bands"])
    return QueryOptions(**values)


def non_empty(value: Optional[str]) -> Optional[str]:
    """An option that names something (a model, a revision, a cluster) must not be empty:
    '' would silently mean the current folder, the default revision or the default cluster."""
    if value is not None and not value.strip():
        raise typer.BadParameter("empty; give a name or leave the option out")
    return value


Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|DIR",
        envvar="SEGEARTH_MODEL",
        callback=non_empty,
        help="Hugging Face repo id, a local checkpoint directory, or 'tiny-random' "
        "(a random miniature network for trying the pipeline; its answers mean nothing).",
        rich_help_panel=_MODEL_PANEL,
    ),
]
Revision = Annotated[
    Optional[str],
    typer.Option(
        "--revision", metavar="REV", callback=non_empty,
        help="Branch, tag or commit of a hub model (pin it for reproducible runs).",
        rich_help_panel=_MODEL_PANEL,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N, a list such as cuda:0,cuda:2, or mps; auto picks a GPU when one is usable. "
        "cuda uses every visible GPU, one model copy each.",
        rich_help_panel=_MODEL_PANEL,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="float32/fp32 (the official numerics), bfloat16/bf16, float16/fp16, mixed (Swin and Phi in bfloat16, "
             "mask heads in float32) or auto: float16 on a GPU, float32 otherwise.",
        rich_help_panel=_MODEL_PANEL,
    ),
]
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", metavar="N", help="Windows sent to the model at once.",
                 rich_help_panel=_MODEL_PANEL),
]
Workers = Annotated[
    Optional[int],
    typer.Option("--workers", metavar="N",
                 help="Threads reading windows ahead of the model; default: one per CPU core (at most 8).",
                 show_default=False, rich_help_panel=_MODEL_PANEL),
]
Task = Annotated[
    str,
    typer.Option(
        "--task",
        metavar="TASK",
        help="Prompt template: 'reasoning' (implicit questions, EarthReason), 'referring' (short descriptions, "
        "RRSIS-D/RefSegRS) or 'auto' (from the model name).",
        rich_help_panel=_MODEL_PANEL,
    ),
]
Mode = Annotated[
    str,
    typer.Option(
        "--mode",
        metavar="auto|whole|tiled",
        help="whole: the scene resized into one model input; tiled: overlapping windows; auto: chooses by scene size.",
        rich_help_panel=_WINDOW_PANEL,
    ),
]
WindowSize = Annotated[
    Optional[int],
    typer.Option("--window", metavar="PIXELS", help="Tiled mode: window footprint in source pixels.",
                 rich_help_panel=_WINDOW_PANEL),
]
Gsd = Annotated[
    Optional[float],
    typer.Option(
        "--gsd", metavar="METRES",
        help="Tiled mode: ground resolution fed to the model, metres per model pixel (sets the window footprint).",
        rich_help_panel=_WINDOW_PANEL,
    ),
]
Overlap = Annotated[
    Optional[float],
    typer.Option(
        "--overlap", metavar="FRACTION",
        help="Tiled mode: fraction of the window shared with each neighbour.", rich_help_panel=_WINDOW_PANEL,
    ),
]
MaxWindows = Annotated[
    int,
    typer.Option(
        "--max-windows", metavar="N",
        help="Refuse (exit 2) a plan of more windows than this, before any work; raise it to run a larger plan.",
        rich_help_panel=_WINDOW_PANEL,
    ),
]
Bands = Annotated[
    Optional[str],
    typer.Option(
        "--bands", metavar="R,G,B",
        help="1-based bands to use as red,green,blue (or one band as gray). Default: by colour interpretation, "
        "else the first three.",
        rich_help_panel=_WINDOW_PANEL,
    ),
]
Threshold = Annotated[
    float,
    typer.Option("--threshold", metavar="P",
                 help="Probability above which a pixel answers the question.", rich_help_panel=_ANSWER_PANEL),
]
MinArea = Annotated[
    float,
    typer.Option("--min-area", metavar="M2", help="Drop polygons smaller than this many square metres.",
                 rich_help_panel=_ANSWER_PANEL),
]
Simplify = Annotated[
    float,
    typer.Option("--simplify", metavar="METRES",
                 help="Simplify polygon outlines with this tolerance in metres (topology kept); 0 keeps pixel edges.",
                 rich_help_panel=_ANSWER_PANEL),
]
Probabilities = Annotated[
    bool,
    typer.Option("--probabilities", help="Add a band of probability (0-254, 255 nodata) to GeoTIFF outputs.",
                 rich_help_panel=_ANSWER_PANEL),
]
Cog = Annotated[
    bool,
    typer.Option("--cog", help="Write GeoTIFF outputs as Cloud-Optimized GeoTIFFs with overviews.",
                 rich_help_panel=_ANSWER_PANEL),
]
Overwrite = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace outputs that already exist (otherwise exit 5 and leave them).",
                 rich_help_panel=_ANSWER_PANEL),
]
PixelCoordinates = Annotated[
    bool,
    typer.Option("--pixel-coordinates",
                 help="Allow vector outputs for a scene without georeferencing; coordinates are pixel col,row.",
                 rich_help_panel=_ANSWER_PANEL),
]
Outputs = Annotated[
    list[Path],
    typer.Option(
        "--output", "-o", metavar="OUT", parser=file_name,
        help="Output file; its extension sets the kind: .tif/.tiff mask GeoTIFF, .gpkg GeoPackage, "
        ".geojson/.json GeoJSON (EPSG:4326), .png quicklook. Repeat for several.",
        show_default=False,
    ),
]
Json = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON summary object on stdout.", rich_help_panel=_REPORT_PANEL),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", help="No progress bar and no informational messages; errors are still printed.",
                 rich_help_panel=_REPORT_PANEL),
]
Debug = Annotated[
    bool,
    typer.Option("--debug", help="Log details and show the full traceback of unexpected errors.",
                 rich_help_panel=_REPORT_PANEL),
]
