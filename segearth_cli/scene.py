"""Open a raster scene and read it window by window, as the model wants it: 8-bit RGB.

Decisions made once per scene, so every window is treated the same:

* Bands: red/green/blue by colour interpretation, else the first three non-alpha bands;
  ``bands`` (1-based) overrides. One band is shown as gray (replicated to three channels);
  a palette band is expanded through its colour table.
* Validity: the alpha band, an internal or external (``.msk``) mask, the nodata value
  (NaN included) and non-finite floats mark pixels invalid. A per-dataset mask or alpha is
  used as is; nodata follows GDAL/rasterio's ``dataset_mask`` rule (a pixel is invalid when
  every chosen band holds its nodata value). Invalid pixels reach the model as 0, like the
  padding.
* Radiometry: 8-bit data passes through. Anything else gets ONE linear stretch for the
  whole scene, the 2nd to 98th percentile of each channel's valid pixels mapped to 0..255,
  measured on a decimated read (GDAL serves it from overviews when the file has them).
  Per-window stretches make brightness, and then the answer, jump at window borders.
* Georeferencing: scenes located only by GCPs or RPCs are read through a WarpedVRT, so
  the pipeline sees a regular north-up grid in the GCP (or WGS 84) CRS. Rotated and
  south-up transforms are kept: the pipeline works in pixel space and outputs reuse the
  transform.

A window becomes a model canvas exactly as the official preprocessing makes one: its
pixels are read at the file's own resolution as uint8 RGB (stretch, palette and validity
applied there), then ``cv2.resize`` with ``INTER_LINEAR`` brings them to the window's
destination size, which sits centred on a zero canvas; validity follows the same geometry
with ``INTER_NEAREST``. For a whole scene that is ``resize_and_pad`` of the full-resolution
image, bit for bit. A footprint of more than :data:`EXACT_READ_MAX_PIXELS` (whole mode on a
huge scene, a very coarse ``--gsd``) is first read reduced by GDAL, from overviews when the
file has them, to no less than twice the destination size, and then resized the same way:
an approximation that keeps memory bounded (the README gives its size).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from .errors import InputError, UsageError, first_line
from .windows import Window

try:  # GDAL errors surface as these when rasterio does not wrap them
    from rasterio._err import CPLE_BaseError as _GDALError
except ImportError:  # pragma: no cover - older rasterio layouts
    _GDALError = RasterioError

#: Percentiles of each channel mapped to 0 and 255 for non-8-bit scenes.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Upper bound on the pixels read to measure the stretch.
STRETCH_SAMPLE_PIXELS = 2**21

#: Largest footprint read at the file's own resolution, so that its canvas is exactly the
#: official one (64 Mpx: every EarthReason image, and tiles up to 8000 px square).
EXACT_READ_MAX_PIXELS = 64_000_000
#: Beyond that, the footprint is read reduced to this many times the destination size per
#: axis: enough for the bilinear resize to see every detail the canvas can hold.
REDUCED_READ_FACTOR = 2

#: Bounds of GDAL's block cache, MB. Its default (5 % of RAM) would count against the
#: pipeline's memory bound; what window overlap can reuse is the band of blocks one grid
#: row of windows spans, so the cache is sized to that (see ``_block_cache_bytes``).
GDAL_CACHE_MIN_MB = 32
GDAL_CACHE_MAX_MB = 256
#: Window height the cache is sized for (the released model's 1024 px input).
_CACHE_WINDOW_ROWS = 1024

_READ_ERRORS = (RasterioError, _GDALError, OSError)

#: ``fail(problem)``: the InputError "<file>: <problem>" for the scene being opened.
Fail = Callable[[str], InputError]


@dataclass(frozen=True)
class Scene:
    """What the pipeline knows about an opened scene, after band and georeference choices.

    ``width``, ``height``, ``crs`` and ``transform`` describe the grid the pipeline reads
    and the outputs use: the file's own grid, or the warped grid when ``warped``.
    """

    path: Path
    width: int
    height: int
    #: Bands in the file.
    count: int
    #: numpy dtype name of the chosen bands (before the stretch to uint8).
    dtype: str
    crs: Optional[CRS]
    transform: Affine
    #: "transform" (a geotransform), "gcps", "rpcs" (both warped), or "none".
    georeferencing: str
    warped: bool
    #: 1-based indexes of the bands read: three for RGB, one for gray or palette.
    bands: tuple[int, ...]
    #: "rgb", "gray" or "palette".
    colour: str
    #: Per chosen band (low, high) mapped linearly to (0, 255); None when data is 8-bit.
    stretch: Optional[tuple[tuple[float, float], ...]]
    #: The chosen bands' nodata value(s) as declared by the file (None when none).
    nodata: Optional[tuple[Optional[float], ...]]
    #: What marks pixels invalid: "none", "nodata", "mask" (internal/external/per-dataset) or "alpha".
    validity: str

    @property
    def georeferenced(self) -> bool:
        """False for a scene with no geotransform, GCPs or RPCs: pixel coordinates only."""
        return self.georeferencing != "none"

    @property
    def name(self) -> str:
        return self.path.name


def open_scene(path: str | Path, bands: Optional[Sequence[int]] = None) -> "SceneReader":
    """Open ``path`` for window reads; use as a context manager.

    Raises :class:`InputError` ("<file>: <problem>") when the file cannot be used.
    """
    return SceneReader(path, bands)


class SceneReader:
    """Reads windows of one scene as 8-bit RGB plus a validity mask.

    Every decision of the module docstring is made once, when the scene is opened.
    """

    def __init__(self, path: str | Path, bands: Optional[Sequence[int]] = None):
        self.path = Path(path)
        self._label = str(path)
        self._cache_need: Optional[int] = _block_cache_bytes(self.path)
        _BLOCK_CACHE.hold(self._cache_need)
        self._file = None
        self._src = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._open(bands)
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str) -> InputError:
        return InputError(f"{self._label}: {problem}")

    def twin(self) -> "SceneReader":
        """Another handle on the same scene, with every decision of this one (bands, stretch).

        A GDAL dataset must be used by one thread at a time; each reader thread of a
        pipelined query reads through a twin of its own. Close it when done.
        """
        twin = object.__new__(SceneReader)
        twin.path, twin._label, twin._cache_need = self.path, self._label, None
        twin._src = twin._file = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                twin._file = _open_file(self.path, twin._fail)
                _, twin._src = _georeference(twin._file, self._data_resampling, twin._fail)
                twin._bands = _BandReader(twin._src, self._bands.bands, twin._fail)
        except BaseException:
            twin.close()
            raise
        twin._data_resampling, twin._palette, twin._stretch = self._data_resampling, self._palette, self._stretch
        twin.scene = self.scene
        return twin

    def _open(self, bands: Optional[Sequence[int]]) -> None:
        self._file = _open_file(self.path, self._fail)
        chosen, colour = _choose_bands(self._file, bands, self._fail)
        # Palette indices must not be blended into indexes of other colours.
        self._data_resampling = Resampling.nearest if colour == "palette" else Resampling.bilinear
        georeferencing, self._src = _georeference(self._file, self._data_resampling, self._fail)
        self._bands = _BandReader(self._src, chosen, self._fail)
        self._palette = _Palette(self._file, chosen[0]) if colour == "palette" else None
        dtype = self._bands.dtype
        self._stretch = _measure_stretch(self._bands) if colour != "palette" and dtype != np.uint8 else None
        nodata = None
        if any(v is not None for v in self._bands.nodata):
            nodata = tuple(None if v is None else float(v) for v in self._bands.nodata)
        self.scene = Scene(
            path=self.path, width=int(self._src.width), height=int(self._src.height), count=int(self._file.count),
            dtype=dtype.name, crs=self._src.crs, transform=self._src.transform, georeferencing=georeferencing,
            warped=self._src is not self._file, bands=self._bands.bands, colour=colour, stretch=self._stretch,
            nodata=nodata, validity=self._bands.validity,
        )

    def check_ends_readable(self) -> None:
        """Read the first and the last block of the file: InputError for a truncated or corrupt
        file. Opening reads only the header; a caller about to spend minutes on the model
        learns here, for the cost of two blocks, that the pixels are not all there."""
        _check_ends_readable(self._file, self._fail)

    # -- reading -----------------------------------------------------------------------

    def _to_rgb(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Stored values (k, h, w) -> uint8 (3, h, w); invalid pixels become 0."""
        if self._palette is not None:
            rgb = self._palette.to_rgb(data[0], valid)
        else:
            if self._stretch is None:
                channels = data if data.dtype == np.uint8 else data.astype(np.uint8)
            else:
                channels = _apply_stretch(data, self._stretch)
            rgb = np.repeat(channels, 3, axis=0) if channels.shape[0] == 1 else channels
        if not valid.all():
            rgb *= valid  # zero the invalid pixels; far cheaper than boolean indexing
        return rgb

    def _rect(self, col_off: int, row_off: int, width: int, height: int, out_w: int, out_h: int):
        rio_window = RioWindow(col_off, row_off, width, height)
        data, valid = self._bands.read(rio_window, out_h, out_w, self._data_resampling)
        return self._to_rgb(data, valid), valid

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The window's model input: uint8 (3, S, S) RGB and bool (S, S) validity.

        Only the window's source rectangle is read (see :func:`footprint_read_size`) and
        made into the canvas by :func:`window_canvas`; the padding around it is 0 and invalid.
        """
        _check_inside(window, self.scene)
        out_w, out_h = footprint_read_size(window)
        rgb, valid = self._rect(window.col_off, window.row_off, window.width, window.height, out_w, out_h)
        return window_canvas(rgb, valid, window)

    def _validity_needs_values(self) -> bool:
        """NaNs and transparent palette entries are only known from the pixel values."""
        return self._bands.is_float or self._palette is not None

    def read_valid(self, window: Window) -> np.ndarray:
        """Only the validity canvas (S, S) of ``read``: cheap when validity needs no pixel values."""
        _check_inside(window, self.scene)
        if self._validity_needs_values():
            _, valid = self.read(window)
            return valid
        out_w, out_h = footprint_read_size(window)
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        return canvas_validity(self._bands.read_validity(rio_window, out_h, out_w), window)

    def read_valid_rows(self, row_off: int, height: int) -> np.ndarray:
        """Validity (height, scene width) of whole scene rows at the file's own resolution.

        Resampled windows only approximate validity (nearest canvas pixel); outputs use
        this so that every invalid input pixel is nodata whatever the windows were.
        """
        width = self.scene.width
        if self._validity_needs_values():
            _, valid = self._rect(0, row_off, width, height, width, height)
            return valid
        return self._bands.read_validity(RioWindow(0, row_off, width, height), height, width)

    def read_overview(self, max_side: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene reduced so its long side is at most ``max_side``: (rgb (3,h,w), valid (h,w)).

        GDAL serves it from overviews when there are any; never a full-resolution read.
        """
        if max_side < 1:
            raise ValueError(f"max_side {max_side} is not positive")
        width, height = self.scene.width, self.scene.height
        out_w, out_h = overview_size(width, height, max_side)
        return self._rect(0, 0, width, height, out_w, out_h)

    # -- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        for dataset in (self._src, self._file):
            if dataset is not None and not dataset.closed:
                dataset.close()
        self._src = self._file = None
        if self._cache_need is not None:
            _BLOCK_CACHE.release(self._cache_need)
            self._cache_need = None

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _BandReader:
    """The chosen bands as stored, and which of their pixels are valid (see the module docstring).

    A read at another size than the window's is resampled by GDAL inside the read.
    """

    def __init__(self, src, bands: Sequence[int], fail: Fail):
        self.src = src
        self.bands = tuple(bands)
        dtypes = [src.dtypes[i - 1] for i in self.bands]
        for dt in dtypes:
            if np.dtype(dt).kind == "c":
                raise fail(f"complex-valued band ({dt}) cannot be shown as an image; convert it to amplitude first")
        self.dtype = np.result_type(*[np.dtype(dt) for dt in dtypes])
        # Bands of different types are read as one common type.
        self._uniform_dtype = len(set(dtypes)) == 1
        self.is_float = self.dtype.kind == "f"
        self.validity, self.nodata = _validity_kind(src, self.bands)
        self._fail = fail

    def read(self, rio_window: RioWindow, out_h: int, out_w: int, resampling: Resampling):
        """Chosen bands as stored (k, out_h, out_w) and validity (out_h, out_w)."""
        native = out_h == rio_window.height and out_w == rio_window.width
        try:
            data = self._read_values(rio_window, out_h, out_w, resampling, native)
            valid = self._validity(rio_window, out_h, out_w, data if native else None)
        except _READ_ERRORS as exc:
            raise self._read_error(rio_window, exc) from None
        if self.is_float:
            valid &= np.isfinite(data).all(axis=0)
        return data, valid

    def read_validity(self, rio_window: RioWindow, out_h: int, out_w: int) -> np.ndarray:
        """Validity (out_h, out_w) from the mask, alpha or nodata alone, without the values' NaNs."""
        try:
            return self._validity(rio_window, out_h, out_w)
        except _READ_ERRORS as exc:
            raise self._read_error(rio_window, exc) from None

    def _read_values(self, rio_window: RioWindow, out_h: int, out_w: int, resampling: Resampling, native: bool):
        sizing = {} if native else {"out_shape": (out_h, out_w), "resampling": resampling}
        if self._uniform_dtype:
            if not native:
                sizing["out_shape"] = (len(self.bands), out_h, out_w)
            return self.src.read(self.bands, window=rio_window, **sizing)
        # rasterio reads several bands in one call only when they share a type.
        data = np.empty((len(self.bands), out_h, out_w), dtype=self.dtype)
        for position, band in enumerate(self.bands):
            data[position] = self.src.read(band, window=rio_window, **sizing)
        return data

    def _validity(self, rio_window: RioWindow, out_h: int, out_w: int, native_data=None) -> np.ndarray:
        if self.validity == "none":
            return np.ones((out_h, out_w), dtype=bool)
        if self.validity in ("mask", "alpha"):
            # A per-dataset mask or alpha is the same for every band: read it once.
            mask = self.src.read_masks(
                self.bands[0], window=rio_window, out_shape=(out_h, out_w), resampling=Resampling.nearest
            )
            return mask > 0
        if native_data is not None:
            valid = np.zeros((out_h, out_w), dtype=bool)
            # Every chosen band has a nodata value here (see _validity_kind).
            for channel, nodata in zip(native_data, self.nodata):
                if isinstance(nodata, float) and np.isnan(nodata):
                    valid |= ~np.isnan(channel)
                else:
                    valid |= channel != nodata
            return valid
        masks = self.src.read_masks(
            self.bands, window=rio_window, out_shape=(len(self.bands), out_h, out_w), resampling=Resampling.nearest
        )
        return (masks > 0).any(axis=0)

    def _read_error(self, rio_window: RioWindow, exc: BaseException) -> InputError:
        where = (f"{int(rio_window.width)}x{int(rio_window.height)} px at column {int(rio_window.col_off)}, "
                 f"row {int(rio_window.row_off)}")
        return self._fail(f"read failed for {where}: {first_line(exc)}")


class _Palette:
    """A palette band's colour table: RGB per index, and which entries are not fully transparent."""

    def __init__(self, src, band: int):
        colormap = src.colormap(band)
        size = max(256, max(colormap) + 1)
        self.table = np.zeros((size, 3), dtype=np.uint8)
        self.usable = np.ones(size, dtype=bool)
        for index, rgba in colormap.items():
            self.table[index] = rgba[:3]
            self.usable[index] = len(rgba) < 4 or rgba[3] > 0

    def to_rgb(self, indexes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """uint8 (3, h, w) colours of an index plane; clears ``valid`` where the entry is transparent."""
        index = indexes.astype(np.intp, copy=False)
        np.clip(index, 0, len(self.table) - 1, out=index)
        valid &= self.usable[index]
        return np.ascontiguousarray(np.moveaxis(self.table[index], -1, 0))


def _open_file(path: Path, fail: Fail):
    """The rasterio dataset of ``path``, or the InputError that says why it cannot be used."""
    if not path.exists():
        raise fail("no such file")
    if path.is_dir():
        raise fail("is a directory, not a raster file")
    if path.stat().st_size == 0:
        raise fail("empty file (0 bytes)")
    try:
        src = rasterio.open(path)
    except _READ_ERRORS as exc:
        raise fail(_describe_open_error(exc)) from None
    if src.count == 0:
        subsets = list(getattr(src, "subdatasets", []) or [])
        src.close()
        hint = f"; open one of its subdatasets, e.g. {subsets[0]}" if subsets else ""
        raise fail(f"has no raster bands{hint}")
    return src


def _check_ends_readable(src, fail: Fail) -> None:
    block_height, block_width = src.block_shapes[0] if src.block_shapes else (src.height, src.width)
    last_col = ((src.width - 1) // block_width) * block_width
    last_row = ((src.height - 1) // block_height) * block_height
    for col, row in dict.fromkeys([(0, 0), (last_col, last_row)]):
        window = RioWindow(col, row, min(block_width, src.width - col), min(block_height, src.height - row))
        try:
            src.read(1, window=window)
        except _READ_ERRORS as exc:
            raise fail(f"truncated or corrupt: the block at column {col}, row {row} cannot be read "
                       f"({first_line(exc)})") from None


def _georeference(src, resampling: Resampling, fail: Fail):
    """("transform" | "gcps" | "rpcs" | "none", the dataset to read from)."""
    if not src.transform.is_identity or src.crs is not None:
        return "transform", src
    gcps, gcp_crs = src.gcps
    rpcs = src.rpcs
    if not gcps and rpcs is None:
        return "none", src
    # Without a nodata value the area outside the warped footprint needs an alpha
    # band to be told apart from real zeros.
    add_alpha = all(v is None for v in src.nodatavals)
    try:
        if gcps:
            crs = gcp_crs or CRS.from_epsg(4326)
            vrt = WarpedVRT(src, src_crs=crs, crs=crs, resampling=resampling, add_alpha=add_alpha)
            return "gcps", vrt
        vrt = WarpedVRT(
            src, crs=CRS.from_epsg(4326), resampling=resampling, add_alpha=add_alpha,
            warp_extras={"SRC_METHOD": "RPC"},
        )
        return "rpcs", vrt
    except _READ_ERRORS as exc:
        kind = "GCPs" if gcps else "RPCs"
        raise fail(f"located only by {kind}, and warping them to a regular grid failed ({first_line(exc)})")


def _measure_stretch(bands: _BandReader) -> tuple[tuple[float, float], ...]:
    """Per band (low, high): the STRETCH_PERCENTILES of its valid pixels in a decimated read."""
    src = bands.src
    total = src.width * src.height
    factor = min(1.0, (STRETCH_SAMPLE_PIXELS / total) ** 0.5)
    out_h = max(1, int(round(src.height * factor)))
    out_w = max(1, int(round(src.width * factor)))
    full = RioWindow(0, 0, src.width, src.height)
    # Nearest keeps the sample made of real pixel values (and lets GDAL use overviews).
    data, valid = bands.read(full, out_h, out_w, Resampling.nearest)
    stretch = []
    low_q, high_q = STRETCH_PERCENTILES
    for channel in data:
        values = channel[valid]
        if values.size == 0:
            stretch.append((0.0, 1.0))
            continue
        low, high = np.percentile(values.astype(np.float64), [low_q, high_q])
        if not high > low:
            # A flat channel: centre its single value instead of mapping it to black.
            low, high = float(low) - 0.5, float(low) + 0.5
        stretch.append((float(low), float(high)))
    return tuple(stretch)


def _check_inside(window: Window, scene: Scene) -> None:
    if (
        window.col_off < 0 or window.row_off < 0 or window.width < 1 or window.height < 1
        or window.col_off + window.width > scene.width
        or window.row_off + window.height > scene.height
    ):
        raise ValueError(f"window {window} is not inside the {scene.width}x{scene.height} scene")


def footprint_read_size(window: Window) -> tuple[int, int]:
    """(width, height) at which a window's footprint is read before it is resized to the canvas.

    The file's own resolution up to :data:`EXACT_READ_MAX_PIXELS`; beyond, a reduced read of
    :data:`REDUCED_READ_FACTOR` times the destination size (never more than the footprint).
    """
    if window.width * window.height <= EXACT_READ_MAX_PIXELS:
        return window.width, window.height
    return (min(window.width, REDUCED_READ_FACTOR * window.dst_width),
            min(window.height, REDUCED_READ_FACTOR * window.dst_height))


def window_canvas(rgb: np.ndarray, valid: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """A footprint's pixels, uint8 RGB (3, h, w) and bool validity (h, w), on the window's model canvas."""
    return canvas_rgb(rgb, window), canvas_validity(valid, window)


def canvas_rgb(rgb: np.ndarray, window: Window) -> np.ndarray:
    """A footprint's uint8 RGB (3, h, w) on the window's model canvas (3, S, S).

    The official rule: ``cv2.resize`` with ``INTER_LINEAR`` to the destination size, centred
    on a zero canvas of ``window.size``. Applied to a whole image at full resolution this is
    ``resize_and_pad``, bit for bit. ``rgb`` itself is handed back when it already is the
    whole canvas (a C-contiguous uint8 footprint read at the canvas size): most windows of
    a tiled plan, whose copy would cost the readers 3 MB each.
    """
    if _is_whole_canvas(rgb, window, (3, window.size, window.size), np.uint8):
        return rgb
    canvas = np.zeros((3, window.size, window.size), dtype=np.uint8)
    rows, cols = window.dst_slices
    destination = (window.dst_width, window.dst_height)
    if rgb.shape[1:] == (window.dst_height, window.dst_width):
        canvas[:, rows, cols] = rgb
    else:
        # Interleaved channels, as the official code hands the image to OpenCV.
        resized = cv2.resize(np.ascontiguousarray(rgb.transpose(1, 2, 0)), destination, interpolation=cv2.INTER_LINEAR)
        canvas[:, rows, cols] = resized.transpose(2, 0, 1)
    return canvas


def canvas_validity(valid: np.ndarray, window: Window) -> np.ndarray:
    """A footprint's validity (h, w) on the window's canvas (S, S): the same geometry, by
    ``INTER_NEAREST``; ``valid`` itself when it already is the whole canvas."""
    if _is_whole_canvas(valid, window, (window.size, window.size), np.bool_):
        return valid
    canvas = np.zeros((window.size, window.size), dtype=bool)
    if valid.shape != (window.dst_height, window.dst_width):
        as_bytes = np.ascontiguousarray(valid, dtype=np.uint8)
        valid = cv2.resize(as_bytes, (window.dst_width, window.dst_height), interpolation=cv2.INTER_NEAREST) > 0
    canvas[window.dst_slices] = valid
    return canvas


def _is_whole_canvas(array: np.ndarray, window: Window, shape: tuple[int, ...], dtype) -> bool:
    return (
        window.dst_height == window.size
        and window.dst_width == window.size
        and array.shape == shape
        and array.dtype == dtype
        and array.flags.c_contiguous
    )


def overview_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` grid reduced so its long side is at most ``max_side``."""
    factor = min(1.0, max_side / max(width, height))
    return max(1, int(round(width * factor))), max(1, int(round(height * factor)))


class _BlockCache:
    """GDAL's block cache (one per process) sized for the most demanding open scene.

    A ``rasterio.Env`` per scene would have to be left in the reverse order of entering,
    but scenes overlap in any order (a batch opens the next scene while the current one is
    still being read); so the open scenes' needs are counted here, and the size the cache
    had before comes back when the last of them closes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needs: list[int] = []
        self._before: Optional[int] = None

    def hold(self, need: int) -> None:
        with self._lock:
            if not self._needs:
                self._before = get_gdal_config("GDAL_CACHEMAX")
            self._needs.append(need)
            # An integer is bytes to GDAL, not megabytes.
            set_gdal_config("GDAL_CACHEMAX", max(self._needs))

    def release(self, need: int) -> None:
        with self._lock:
            self._needs.remove(need)
            size = max(self._needs) if self._needs else self._before
            if size is not None:
                set_gdal_config("GDAL_CACHEMAX", size)


_BLOCK_CACHE = _BlockCache()


def _block_cache_bytes(path: Path) -> int:
    """Enough cache for the blocks under one grid row of windows plus the next, within bounds.

    Tiles are decoded once even though neighbouring windows overlap: the row of windows
    being read and the rows it shares with the next grid row stay cached.
    """
    low, high = GDAL_CACHE_MIN_MB * 2**20, GDAL_CACHE_MAX_MB * 2**20
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                block_rows = src.block_shapes[0][0] if src.block_shapes else 1
                bytes_per_pixel = sum(np.dtype(dt).itemsize for dt in src.dtypes)
                need = (_CACHE_WINDOW_ROWS + 2 * block_rows) * src.width * bytes_per_pixel * 5 // 4
    except _READ_ERRORS:
        return low  # the real open reports the problem
    return int(min(high, max(low, need)))


def _describe_open_error(exc: BaseException) -> str:
    text = first_line(exc)
    lowered = text.lower()
    if "not recognized as being in a supported file format" in lowered or "not recognised" in lowered:
        return "not a raster format GDAL can read"
    if "permission denied" in lowered:
        return "permission denied"
    return f"cannot be opened as a raster ({text})"


def check_band_choice(bands: Sequence[int]) -> None:
    """Raise UsageError unless ``bands`` names one band (gray) or three (red, green, blue), 1-based."""
    if len(bands) not in (1, 3) or any(int(b) < 1 for b in bands):
        given = ",".join(str(b) for b in bands)
        raise UsageError(f"--bands {given}: give one band (gray) or three (red,green,blue), 1-based, e.g. 4,3,2")


def _choose_bands(src, bands: Optional[Sequence[int]], fail) -> tuple[list[int], str]:
    """(1-based band indexes, "rgb" | "gray" | "palette")."""
    interps = list(src.colorinterp)
    if bands is not None:
        check_band_choice(bands)
        chosen = [int(b) for b in bands]
        for b in chosen:
            if not 1 <= b <= src.count:
                raise fail(f"--bands asks for band {b}, but the file has {src.count} band{'s' if src.count != 1 else ''}")
    else:
        by_interp = {ci: i for i, ci in reversed(list(enumerate(interps, start=1)))}
        if all(ci in by_interp for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            chosen = [by_interp[ColorInterp.red], by_interp[ColorInterp.green], by_interp[ColorInterp.blue]]
        else:
            colour_bands = [i for i, ci in enumerate(interps, start=1) if ci != ColorInterp.alpha] or [1]
            chosen = colour_bands[:3] if len(colour_bands) >= 3 else colour_bands[:1]
    if len(chosen) == 1:
        has_table = interps[chosen[0] - 1] == ColorInterp.palette
        return chosen, "palette" if has_table and _has_colormap(src, chosen[0]) else "gray"
    return chosen, "rgb"


def _has_colormap(src, band: int) -> bool:
    try:
        return bool(src.colormap(band))
    except (ValueError, *_READ_ERRORS):
        return False


def _validity_kind(src, bands: tuple[int, ...]) -> tuple[str, tuple]:
    """("none" | "mask" | "alpha" | "nodata", the chosen bands' nodata values)."""
    nodata = tuple(src.nodatavals[b - 1] for b in bands)
    flags = [set(src.mask_flag_enums[b - 1]) for b in bands]
    if any(MaskFlags.alpha in f for f in flags):
        return "alpha", nodata
    if any(MaskFlags.per_dataset in f for f in flags):
        return "mask", nodata
    if all(MaskFlags.nodata in f for f in flags) and all(v is not None for v in nodata):
        return "nodata", nodata
    return "none", nodata


def _apply_stretch(data: np.ndarray, stretch: Sequence[tuple[float, float]]) -> np.ndarray:
    work_dtype = np.float64 if data.dtype.itemsize > 4 else np.float32
    out = np.empty(data.shape, dtype=np.uint8)
    for index, (low, high) in enumerate(stretch):
        channel = data[index].astype(work_dtype)
        channel -= work_dtype(low)
        channel *= work_dtype(255.0 / (high - low))
        np.clip(channel, 0, 255, out=channel)
        np.nan_to_num(channel, copy=False, nan=0.0)
        np.rint(channel, out=channel)
        out[index] = channel
    return out
