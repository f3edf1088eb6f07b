"""Plan the windows a scene is cut into before it reaches the model.

Two ways to show a scene to a model whose input is an ``S`` x ``S`` square (S = 1024 for
the released SegEarth-R1 models):

``whole``
    The scene is resized so its long side is ``S`` and centred on a zero canvas, exactly as
    the model was trained and evaluated (the short side is ``int(short * S / long)``, the
    truncation the official preprocessing uses). One model call, the whole scene as
    context, at a ground resolution ``long / S`` times coarser than the file's.

``tiled``
    Overlapping square footprints of ``window`` source pixels, each resampled to ``S`` x
    ``S``. The footprint defaults to ``S`` source pixels (the file's own resolution, no
    resampling at all), or follows from ``--gsd``: ``window = S * gsd / pixel size``.
    Neighbours share ``overlap`` of the footprint; the stride is ``window - overlap``. The
    last window of each row and column is moved back inside the scene, so every window is
    full-size whenever the scene is larger than the footprint; a scene dimension smaller than
    the footprint gets a single window, centred on the canvas with zero padding around it.

``auto`` (see :data:`AUTO_WHOLE_MAX_FACTOR`)
    Whole while the scene's long side is at most ``2 * S`` pixels (2048 for the released
    model), tiled beyond. Shrinking a scene into one input coarsens its ground resolution by
    ``long / S``; up to a factor of two the objects keep most of their detail and the model
    sees the whole scene at once, which implicit questions ("where could relief camps go?")
    need. Past that, small objects fall below what the model resolves, and native-resolution
    tiles answer better than one blurred view. An explicit ``window`` or ``gsd`` means the
    user asked for tiles, so ``auto`` then tiles.

Windows come in row-major order: all windows of one row of the grid share ``row_off`` and
``height``, which is what lets the stitcher release output rows as soon as a grid row is
done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from .errors import UsageError

if TYPE_CHECKING:  # scene.py imports this module; the reverse import would be circular
    from .scene import Scene

#: ``auto`` resizes the whole scene into one input while its long side is at most this many
#: model inputs (2 x 1024 = 2048 px for the released model).
AUTO_WHOLE_MAX_FACTOR = 2.0
#: Fraction of the tiled footprint neighbouring windows share when ``overlap`` is not given.
DEFAULT_OVERLAP = 0.125
#: Smallest tiled footprint, in source pixels; smaller ones give the model nothing to see.
MIN_WINDOW = 16

MODES = ("auto", "whole", "tiled")
#: Plans of more windows are refused unless the user raises the budget (``--max-windows``).
#: 20,000 native 1024 px windows cover about 21 gigapixels, a 145,000 px square: more than
#: any single satellite or aerial scene. Each window costs a model pass (about 0.1 s on a
#: GPU, seconds on a CPU), so 20,000 is already half an hour to a day of work; a plan beyond
#: it comes from an overlap near 1 or a window far smaller than the model input, not from data.
DEFAULT_MAX_WINDOWS = 20_000


@dataclass(frozen=True)
class Window:
    """One model input: a rectangle of the scene resampled into a square canvas.

    ``col_off, row_off, width, height`` is the source rectangle, in scene pixels, always
    inside the scene. It is resampled by ``scale`` (model pixels per scene pixel) and
    placed at ``dst_col_off, dst_row_off`` in the ``size`` x ``size`` canvas; the rest of
    the canvas is padding. The exact mapping is rectangle to rectangle with pixel centres
    aligned (``dst_width / width`` across, ``dst_height / height`` down), which can differ
    from ``scale`` by the rounding of the destination size.
    """

    col_off: int
    row_off: int
    width: int
    height: int
    scale: float
    size: int
    dst_col_off: int
    dst_row_off: int
    dst_width: int
    dst_height: int

    @property
    def native(self) -> bool:
        """True when source and destination rectangles have the same size (no resampling)."""
        return self.width == self.dst_width and self.height == self.dst_height

    @property
    def src_slices(self) -> tuple[slice, slice]:
        return slice(self.row_off, self.row_off + self.height), slice(self.col_off, self.col_off + self.width)

    @property
    def dst_slices(self) -> tuple[slice, slice]:
        return (
            slice(self.dst_row_off, self.dst_row_off + self.dst_height),
            slice(self.dst_col_off, self.dst_col_off + self.dst_width),
        )


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one scene, in row-major order, and the settings that produced them."""

    mode: str  # "whole" or "tiled" (what "auto" resolved to)
    windows: tuple[Window, ...]
    scene_width: int
    scene_height: int
    input_size: int
    #: Side of a full window's footprint in source pixels (whole: the scene's long side).
    footprint: int
    #: Source pixels shared by neighbouring windows (0 in whole mode).
    overlap: int
    #: Why this mode and footprint were chosen, in words (for logs and the run summary).
    reason: str

    def __iter__(self) -> Iterator[Window]:
        return iter(self.windows)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Window:
        return self.windows[index]

    @property
    def rows(self) -> tuple[tuple[Window, ...], ...]:
        """Windows grouped by grid row (shared ``row_off``), top to bottom."""
        groups: list[list[Window]] = []
        for window in self.windows:
            if groups and groups[-1][0].row_off == window.row_off:
                groups[-1].append(window)
            else:
                groups.append([window])
        return tuple(tuple(group) for group in groups)


def plan_windows(
    scene: "Scene",
    mode: str = "auto",
    input_size: int = 1024,
    window: Optional[int] = None,
    gsd: Optional[float] = None,
    overlap: Optional[float] = None,
    max_windows: Optional[int] = None,
) -> WindowPlan:
    """Cut ``scene`` into model inputs of ``input_size`` x ``input_size``.

    ``window``: tiled footprint in source pixels; ``gsd``: metres per model pixel, which
    sets the footprint from the scene's pixel size instead; ``overlap``: fraction of the
    footprint shared with each neighbour (default :data:`DEFAULT_OVERLAP`). See the module
    docstring for the modes and the ``auto`` rule. A tiled plan of more than
    ``max_windows`` windows raises UsageError naming the count and the options behind it.
    """
    check_window_options(mode, window, gsd, overlap)
    if input_size < 1:
        raise UsageError(f"model input size {input_size} is not positive")
    width, height = int(scene.width), int(scene.height)
    long_side = max(width, height)

    if mode == "auto":
        if window is None and gsd is None and long_side <= AUTO_WHOLE_MAX_FACTOR * input_size:
            return _plan_whole(
                width, height, input_size,
                f"auto: long side {long_side} px <= {AUTO_WHOLE_MAX_FACTOR:g} x {input_size}, whole scene in one input",
            )
        mode = "tiled"
    if mode == "whole":
        return _plan_whole(width, height, input_size, f"whole: long side {long_side} px resized to {input_size}")

    footprint, why = _footprint(scene, input_size, window, gsd)
    _check_scene_is_seen(width, height, input_size, footprint, window, gsd)
    fraction = DEFAULT_OVERLAP if overlap is None else overlap
    overlap_px = min(int(round(footprint * fraction)), footprint - 1)
    if max_windows is not None:
        _check_budget(width, height, footprint, overlap_px, max_windows, window, gsd, overlap)
    return _plan_tiled(width, height, input_size, footprint, overlap_px, why)


def _check_scene_is_seen(width: int, height: int, input_size: int, footprint: int, window: Optional[int],
                         gsd: Optional[float]) -> None:
    """UsageError when a window far larger than the scene would shrink it to a speck of the model input.

    Only a footprint larger than the input shrinks anything: a scene smaller than a
    native-resolution window is padded, not shrunk.
    """
    seen = max(width, height) * input_size / footprint
    if footprint <= input_size or seen >= MIN_WINDOW:
        return
    given = f"--window {window}" if window is not None else f"--gsd {gsd:g}"
    raise UsageError(
        f"{given}: the {width} x {height} px scene would fill only {math.floor(seen * 10) / 10:g} px of the model's "
        f"{input_size} px input (at least {MIN_WINDOW}); give a smaller {given.split()[0]}, or --mode whole"
    )


def _check_budget(width: int, height: int, footprint: int, overlap_px: int, max_windows: int,
                  window: Optional[int], gsd: Optional[float], overlap: Optional[float]) -> None:
    stride = footprint - overlap_px
    count = len(_axis_positions(width, footprint, stride)) * len(_axis_positions(height, footprint, stride))
    if count <= max_windows:
        return
    given = [f"--window {window}" if window is not None else "", f"--gsd {gsd:g}" if gsd is not None else "",
             f"--overlap {overlap:g}" if overlap is not None else ""]
    settings = " ".join(g for g in given if g) or "the default window"
    raise UsageError(
        f"{settings} cuts the {width} x {height} px scene into {count:,} windows, more than the budget of "
        f"{max_windows:,}: use a larger --window or --gsd or a smaller --overlap, or pass --max-windows {count} "
        "to run it anyway"
    )


def check_window_options(
    mode: str, window: Optional[int] = None, gsd: Optional[float] = None, overlap: Optional[float] = None
) -> None:
    """Raise UsageError for window settings that no scene could satisfy.

    Needs no scene, so the command line can refuse a typo before the model is loaded.
    """
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if window is not None and gsd is not None:
        raise UsageError("--window and --gsd both set the window footprint; give one of them")
    if mode == "whole" and (window is not None or gsd is not None):
        raise UsageError("--window and --gsd apply to tiled windows, not to --mode whole")
    if window is not None and window < MIN_WINDOW:
        raise UsageError(f"--window {window}: at least {MIN_WINDOW} source pixels")
    if gsd is not None and not gsd > 0:
        raise UsageError(f"--gsd {gsd}: give a positive number of metres per pixel")
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise UsageError(f"--overlap {overlap}: give a fraction of the window in [0, 1)")


def check_gsd_measurable(scene: "Scene", gsd: Optional[float]) -> None:
    """Raise UsageError when ``gsd`` is given for a scene whose pixels have no size in metres."""
    if gsd is not None and ground_pixel_size(scene) is None:
        raise UsageError(
            f"{scene.path}: --gsd needs a scene with a coordinate reference system (this one has none); use --window"
        )


def whole_window(width: int, height: int, size: int) -> Window:
    """The one window of whole mode: a ``width`` x ``height`` image placed as the official preprocessing places it."""
    scale = size / max(width, height)
    # Same truncation as the official preprocessing (and segearth_model.preprocess).
    dst_w = size if width >= height else max(1, int(width * scale))
    dst_h = size if height >= width else max(1, int(height * scale))
    return Window(
        col_off=0, row_off=0, width=width, height=height, scale=scale, size=size,
        dst_col_off=(size - dst_w) // 2, dst_row_off=(size - dst_h) // 2, dst_width=dst_w, dst_height=dst_h,
    )


def _plan_whole(width: int, height: int, size: int, reason: str) -> WindowPlan:
    window = whole_window(width, height, size)
    return WindowPlan("whole", (window,), width, height, size, max(width, height), 0, reason)


def _axis_positions(length: int, footprint: int, stride: int) -> list[tuple[int, int]]:
    """(offset, extent) of the windows along one axis; the last one is pulled back inside."""
    if length <= footprint:
        return [(0, length)]
    count = math.ceil((length - footprint) / stride) + 1
    return [(min(i * stride, length - footprint), footprint) for i in range(count)]


def _plan_tiled(width: int, height: int, size: int, footprint: int, overlap: int, reason: str) -> WindowPlan:
    stride = footprint - overlap
    scale = size / footprint
    cols = _axis_positions(width, footprint, stride)
    rows = _axis_positions(height, footprint, stride)
    windows = []
    for row_off, h in rows:
        dst_h = size if h == footprint else min(size, max(1, int(round(h * scale))))
        for col_off, w in cols:
            dst_w = size if w == footprint else min(size, max(1, int(round(w * scale))))
            windows.append(
                Window(
                    col_off=col_off, row_off=row_off, width=w, height=h, scale=scale, size=size,
                    dst_col_off=(size - dst_w) // 2, dst_row_off=(size - dst_h) // 2, dst_width=dst_w, dst_height=dst_h,
                )
            )
    return WindowPlan("tiled", tuple(windows), width, height, size, footprint, overlap, reason)


def _footprint(scene: "Scene", size: int, window: Optional[int], gsd: Optional[float]) -> tuple[int, str]:
    if window is not None:
        return int(window), f"tiled: {window} px windows resampled to {size}"
    if gsd is not None:
        check_gsd_measurable(scene, gsd)
        pixel_m = ground_pixel_size(scene)
        footprint = int(round(size * gsd / pixel_m))
        if footprint < MIN_WINDOW:
            raise UsageError(
                f"--gsd {gsd:g}: the scene's pixels are {pixel_m:.3g} m, so a window would span only {footprint} px "
                f"(at least {MIN_WINDOW}); give a larger --gsd"
            )
        return footprint, f"tiled: --gsd {gsd:g} m over {pixel_m:.3g} m pixels -> {footprint} px windows"
    return size, f"tiled: native-resolution {size} px windows"


def ground_pixel_size(scene: "Scene") -> Optional[float]:
    """Side of one scene pixel in metres, or None when the scene has no CRS.

    Non-square and rotated pixels are reduced to the side of the square of the same area.
    In a geographic CRS the pixel is measured on the ellipsoid at the scene centre.
    """
    crs = scene.crs
    if crs is None:
        return None
    t = scene.transform
    # Lengths of the pixel's column and row vectors, in CRS units.
    step_x = math.hypot(t.a, t.d)
    step_y = math.hypot(t.b, t.e)
    if crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        cx, cy = t @ (scene.width / 2.0, scene.height / 2.0)
        x1, y1 = t @ (scene.width / 2.0 + 1.0, scene.height / 2.0)
        x2, y2 = t @ (scene.width / 2.0, scene.height / 2.0 + 1.0)
        clamp = lambda lat: max(-89.9, min(89.9, lat))  # noqa: E731 - the poles have no east-west extent
        _, _, step_x = geod.inv(cx, clamp(cy), x1, clamp(y1))
        _, _, step_y = geod.inv(cx, clamp(cy), x2, clamp(y2))
    else:
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        step_x *= factor
        step_y *= factor
    area = step_x * step_y
    return math.sqrt(area) if area > 0 else None

