"""The answer as a GeoTIFF on the scene's grid, written while the row blocks stream past.

Bands: one uint8 mask band per question (1 = answer, 0 = not, 255 = nodata: the input
pixel was invalid), then, with ``probabilities``, one band per question with the
probability scaled to 0-254 (255 = nodata; the band's scale is 1/254 so GDAL-aware
software reads probabilities directly). Mask bands come first, so band ``i`` is always
question ``i``'s mask with or without probability bands. Band descriptions are the
questions; band tags ``question`` and ``kind`` (``mask`` / ``probability``) say the same
for scripts. Dataset tags record the questions, model, threshold, the mask rule, the tool
version and any extra tags passed in.

The grid (CRS, affine transform, including rotated and south-up ones, and size) is the
scene's. Files are tiled 512 x 512, DEFLATE (level 3) with horizontal differencing
(predictor 2), BIGTIFF=IF_SAFER. Rows are buffered into 512-row tile rows so each tile is compressed
once; memory is one tile row per band.

Cloud-Optimized GeoTIFF (``cog``): the rows stream into tiled staging files next to the
output, overviews are built there (nearest for masks, which must stay 0/1, average for
probabilities; one staging file per resampling because GDAL builds a file's overviews
with one method), a VRT joins them, and GDAL's COG driver copies that into the output
reusing those overviews. ``cog_layout_problems`` checks the result the way a COG
validator does: tiled, overviews present, all IFDs before the image data, overview data
before full-resolution data.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from .. import __version__
from ..errors import OutputError, first_line

NODATA = 255
PROBABILITY_SCALE = 254
BLOCK = 512
MASK_RULE = "1 where probability > threshold on valid input, 0 elsewhere, 255 where the input was invalid"

_CREATION_OPTIONS = {
    "tiled": True,
    "blockxsize": BLOCK,
    "blockysize": BLOCK,
    "compress": "deflate",
    "predictor": 2,
    # Level 3 compresses probability bands four times faster than the default 6 for files
    # about a quarter larger; masks compress to almost nothing at any level.
    "zlevel": 3,
    "bigtiff": "IF_SAFER",
}
_STAGING_OPTIONS = dict(_CREATION_OPTIONS, zlevel=1)


def answer_mask(probability: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels that answer the question: probability strictly above ``threshold`` on valid input.

    Strictly above, so that the default 0.5 is the paper's ``logit > 0``. Shared by every
    output so the raster, the polygons and the quicklook agree pixel for pixel.
    """

    return (probability > threshold) & valid


def scale_probability(probability: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] -> 0..254 (rounded to nearest), 255 where the input was invalid."""

    scaled = probability * np.float32(PROBABILITY_SCALE)
    np.clip(scaled, 0.0, PROBABILITY_SCALE, out=scaled)
    scaled += np.float32(0.5)
    result = scaled.astype(np.uint8)
    result[~valid] = NODATA
    return result


class MaskRasterSink:
    """Streams RowBlocks into a mask (and probability) GeoTIFF at ``path``; see the module docstring.

    ``questions[i]`` is the text of probability plane ``i``; ``question_indexes`` picks the
    planes written (None: all). ``tags`` are added to the dataset tags (values that are not
    strings are stored as JSON).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        scene,
        questions: Sequence[str],
        question_indexes: Optional[Iterable[int]] = None,
        threshold: float = 0.5,
        probabilities: bool = False,
        cog: bool = False,
        tags: Optional[Mapping[str, object]] = None,
        model: Optional[str] = None,
    ):
        self.path = Path(path)
        self.scene = scene
        self.questions = list(questions)
        self.question_indexes = list(range(len(self.questions)) if question_indexes is None else question_indexes)
        self.threshold = float(threshold)
        self.probabilities = bool(probabilities)
        self.cog = bool(cog)
        self.width, self.height = int(scene.width), int(scene.height)
        selected = [self.questions[i] for i in self.question_indexes]
        self.dataset_tags = {
            "questions": json.dumps(selected, ensure_ascii=False),
            "model": model or "",
            "threshold": repr(self.threshold),
            "mask_rule": MASK_RULE,
            "segearth_version": __version__,
            "TIFFTAG_SOFTWARE": f"segearth {__version__}",
        }
        for key, value in (tags or {}).items():
            self.dataset_tags[str(key)] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        self._georef = _georeferencing(scene)
        self._next_row = 0
        self._buffer_row = 0  # first scene row held in the buffer
        self._buffer_fill = 0
        count = len(self.question_indexes)
        self._mask_buffer = np.full((count, BLOCK, self.width), NODATA, dtype=np.uint8)
        self._probability_buffer = (
            np.full((count, BLOCK, self.width), NODATA, dtype=np.uint8) if self.probabilities else None
        )
        self._staged: list[Path] = []
        try:
            if self.cog:
                self._mask_path = self._stage_path("mask")
                self._probability_path = self._stage_path("probability") if self.probabilities else None
                self._mask_dst = self._open(self._mask_path, count, _STAGING_OPTIONS)
                self._probability_dst = (
                    self._open(self._probability_path, count, _STAGING_OPTIONS) if self.probabilities else None
                )
            else:
                bands = count * (2 if self.probabilities else 1)
                self._mask_dst = self._open(self.path, bands, _CREATION_OPTIONS)
                self._probability_dst = self._mask_dst if self.probabilities else None
                self._describe(self._mask_dst, probability_offset=count if self.probabilities else None)
        except BaseException:
            self.abort()
            raise
        self.closed = False

    # -- writing -------------------------------------------------------------------------

    @property
    def _vrt_path(self) -> Path:
        # Named after the output, like the staging files, so atomic.py removes it with the output's temporary.
        return self.path.with_name(f"{self.path.name}.stage.vrt")

    def _stage_path(self, kind: str) -> Path:
        # Named after the output so that atomic.py removes it with the output's temporary.
        path = self.path.with_name(f"{self.path.name}.stage-{kind}.tif")
        self._staged.append(path)
        return path

    def _open(self, path: Path, count: int, options: dict):
        profile = dict(
            driver="GTiff", width=self.width, height=self.height, count=count, dtype="uint8", nodata=NODATA, **options
        )
        profile.update(self._georef)
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
                # A bare pixel grid is written on purpose; the run reports that once, in words.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                return rasterio.open(path, "w", **profile)
        except rasterio.errors.RasterioError as error:
            raise OutputError(f"{path}: cannot be written ({first_line(error)})") from None

    def _describe(self, dst, probability_offset: Optional[int]) -> None:
        dst.update_tags(**self.dataset_tags)
        for band, index in enumerate(self.question_indexes, start=1):
            kinds = [(band, "mask")]
            if probability_offset is not None:
                kinds.append((band + probability_offset, "probability"))
            for number, kind in kinds:
                description, tags = _band_labels(self.questions[index], kind)
                dst.set_band_description(number, description)
                dst.update_tags(number, **tags)
        if probability_offset is not None:
            count = len(self.question_indexes)
            dst.scales = tuple([1.0] * count + [1.0 / PROBABILITY_SCALE] * count)
            dst.offsets = tuple([0.0] * (2 * count))

    def write(self, block) -> None:
        rows = block.height
        if rows == 0:
            return
        if block.row_off != self._next_row:
            raise ValueError(f"row block at row {block.row_off} arrived where row {self._next_row} was expected")
        self._next_row = block.row_off + rows
        start = 0
        while start < rows:
            take = min(rows - start, BLOCK - self._buffer_fill)
            valid = block.valid[start : start + take]
            target = slice(self._buffer_fill, self._buffer_fill + take)
            for plane, index in enumerate(self.question_indexes):
                probability = block.probabilities[index, start : start + take]
                mask = answer_mask(probability, valid, self.threshold).view(np.uint8)
                out = self._mask_buffer[plane, target]
                out[...] = mask
                out[~valid] = NODATA
                if self._probability_buffer is not None:
                    self._probability_buffer[plane, target] = scale_probability(probability, valid)
            self._buffer_fill += take
            start += take
            if self._buffer_fill == BLOCK:
                self._flush()

    def _flush(self) -> None:
        if self._buffer_fill == 0:
            return
        fill = self._buffer_fill
        window = rasterio.windows.Window(0, self._buffer_row, self.width, fill)
        count = len(self.question_indexes)
        masks = list(range(1, count + 1))
        try:
            self._mask_dst.write(self._mask_buffer[:, :fill], indexes=masks, window=window)
            if self._probability_buffer is not None:
                bands = masks if self.cog else [count + band for band in masks]
                self._probability_dst.write(self._probability_buffer[:, :fill], indexes=bands, window=window)
        except rasterio.errors.RasterioError as error:  # disk full, file system gone
            raise OutputError(f"{self.path}: cannot be written ({first_line(error)})") from None
        self._buffer_row += fill
        self._buffer_fill = 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._flush()
            self._mask_dst.close()
            if self._probability_dst is not None and self._probability_dst is not self._mask_dst:
                self._probability_dst.close()
            if self.cog:
                self._write_cog()
        except rasterio.errors.RasterioError as error:
            self.abort()
            raise OutputError(f"{self.path}: cannot be written ({first_line(error)})") from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._remove_staged()
        self.closed = True
        self._mask_buffer = self._probability_buffer = None

    def abort(self) -> None:
        """Close and delete what was written (the caller failed part-way)."""

        for name in ("_mask_dst", "_probability_dst"):
            dst = getattr(self, name, None)
            if dst is not None and not dst.closed:
                try:
                    dst.close()
                except Exception:
                    pass
        self._remove_staged()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.closed = True

    def _remove_staged(self) -> None:
        for path in [*self._staged, self._vrt_path]:
            for candidate in (path, Path(f"{path}.ovr"), Path(f"{path}.aux.xml")):
                try:
                    os.unlink(candidate)
                except OSError:
                    pass

    # -- Cloud-Optimized GeoTIFF ---------------------------------------------------------

    def _write_cog(self) -> None:
        factors = overview_factors(self.width, self.height)
        with rasterio.Env(GDAL_PAM_ENABLED="NO", COMPRESS_OVERVIEW="DEFLATE", PREDICTOR_OVERVIEW="2", ZLEVEL_OVERVIEW="1"):
            if factors:
                with rasterio.open(self._mask_path, "r+") as dst:
                    dst.build_overviews(factors, Resampling.nearest)
                if self._probability_path is not None:
                    with rasterio.open(self._probability_path, "r+") as dst:
                        dst.build_overviews(factors, Resampling.average)
            vrt = self._vrt_path
            vrt.write_text(self._vrt_xml(), encoding="utf-8")
            rasterio.shutil.copy(
                str(vrt),
                str(self.path),
                driver="COG",
                COMPRESS="DEFLATE",
                PREDICTOR="YES",
                LEVEL="3",
                BLOCKSIZE=str(BLOCK),
                BIGTIFF="IF_SAFER",
                OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
            )

    def _vrt_xml(self) -> str:
        """A VRT stacking the staging files, carrying descriptions, tags and scales into the COG."""

        lines = [f'<VRTDataset rasterXSize="{self.width}" rasterYSize="{self.height}">']
        if "crs" in self._georef and self._georef["crs"] is not None:
            lines.append(f"  <SRS>{escape(self._georef['crs'].to_wkt())}</SRS>")
        if "transform" in self._georef:
            lines.append(f"  <GeoTransform>{', '.join(repr(v) for v in self._georef['transform'].to_gdal())}</GeoTransform>")
        lines.append(_metadata_xml(self.dataset_tags, indent="  "))
        sources = [(self._mask_path, "mask")]
        if self._probability_path is not None:
            sources.append((self._probability_path, "probability"))
        band = 0
        for path, kind in sources:
            for source_band, index in enumerate(self.question_indexes, start=1):
                band += 1
                description, tags = _band_labels(self.questions[index], kind)
                lines.append(f'  <VRTRasterBand dataType="Byte" band="{band}">')
                lines.append(f"    <Description>{escape(description)}</Description>")
                lines.append(f"    <NoDataValue>{NODATA}</NoDataValue>")
                if kind == "probability":
                    lines.append(f"    <Offset>0</Offset><Scale>{repr(1.0 / PROBABILITY_SCALE)}</Scale>")
                lines.append(_metadata_xml(tags, indent="    "))
                lines.append("    <SimpleSource>")
                lines.append(f'      <SourceFilename relativeToVRT="1">{escape(path.name)}</SourceFilename>')
                lines.append(f"      <SourceBand>{source_band}</SourceBand>")
                lines.append("    </SimpleSource>")
                lines.append("  </VRTRasterBand>")
        lines.append("</VRTDataset>")
        return "\n".join(lines) + "\n"


def _band_labels(question: str, kind: str) -> tuple[str, dict[str, str]]:
    """(description, band tags) of a "mask" or "probability" band answering ``question``."""

    if kind == "mask":
        return question, {"question": question, "kind": kind}
    return f"probability: {question}", {"question": question, "kind": kind, "scale": f"value / {PROBABILITY_SCALE}"}


def _metadata_xml(tags: Mapping[str, str], indent: str) -> str:
    items = "".join(f'<MDI key="{escape(k, {chr(34): "&quot;"})}">{escape(v)}</MDI>' for k, v in tags.items())
    return f"{indent}<Metadata>{items}</Metadata>"


def _georeferencing(scene) -> dict:
    """The profile entries that put the output on the scene's grid (none for a bare pixel grid)."""

    transform = Affine(*tuple(scene.transform)[:6]) if scene.transform is not None else Affine.identity()
    crs = scene.crs
    result: dict = {}
    if crs is not None or not transform.is_identity:
        result["transform"] = transform
    if crs is not None:
        result["crs"] = crs
    return result


def overview_factors(width: int, height: int, block: int = BLOCK) -> list[int]:
    """Overview decimation factors 2, 4, ... until the smallest level fits in one tile (as GDAL's COG driver)."""

    factors = []
    factor = 2
    while math.ceil(max(width, height) / (factor // 2)) > block:
        factors.append(factor)
        factor *= 2
    return factors


# -- COG layout check --------------------------------------------------------------------------

_TAG_NEW_SUBFILE_TYPE = 254
_TAG_IMAGE_WIDTH = 256
_TAG_IMAGE_LENGTH = 257
_TAG_STRIP_OFFSETS = 273
_TAG_STRIP_BYTE_COUNTS = 279
_TAG_TILE_WIDTH = 322
_TAG_TILE_OFFSETS = 324
_TAG_TILE_BYTE_COUNTS = 325


def cog_layout_problems(path: str | os.PathLike) -> list[str]:
    """What keeps ``path`` from being a Cloud-Optimized GeoTIFF; an empty list means none.

    Checks the facts COG readers rely on: the main image is tiled; it has overviews when it
    is larger than one tile, each tiled and each half the size of the previous; every IFD
    is stored before any image data (one ranged read gets all headers); overview data comes
    before full-resolution data, smallest overview first (so a reader zooming in reads
    forward); and the main image's tiles are in row-major order.
    """

    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return ["not a TIFF file"]
        with data:
            return _layout_problems(data)


def _layout_problems(data) -> list[str]:
    problems: list[str] = []
    if data[:2] not in (b"II", b"MM"):
        return ["not a TIFF file"]
    endian = "<" if data[:2] == b"II" else ">"
    magic = struct.unpack(endian + "H", data[2:4])[0]
    if magic == 42:
        big = False
        next_ifd = struct.unpack(endian + "I", data[4:8])[0]
    elif magic == 43:
        big = True
        next_ifd = struct.unpack(endian + "Q", data[8:16])[0]
    else:
        return ["not a TIFF file"]

    ifds = []
    ifd_offsets = []
    while next_ifd:
        ifd_offsets.append(next_ifd)
        entries, next_ifd = _read_ifd(data, next_ifd, endian, big)
        ifds.append(entries)
        if len(ifds) > 64:
            return ["too many IFDs"]
    if not ifds:
        return ["no image directory"]

    images = []  # full resolution and reduced-resolution images, mask IFDs excluded
    for entries in ifds:
        subfile = entries.get(_TAG_NEW_SUBFILE_TYPE, [0])[0]
        if subfile & 4:  # transparency mask
            continue
        images.append((subfile, entries))
    main_subfile, main = images[0]
    if main_subfile & 1:
        problems.append("the first image is a reduced-resolution image")
    if _TAG_TILE_WIDTH not in main:
        problems.append("the main image is not tiled")
    overviews = [entries for subfile, entries in images[1:] if subfile & 1]
    width = main.get(_TAG_IMAGE_WIDTH, [0])[0]
    height = main.get(_TAG_IMAGE_LENGTH, [0])[0]
    tile = main.get(_TAG_TILE_WIDTH, [0])[0]
    if tile and max(width, height) > tile and not overviews:
        problems.append("no overviews although the image is larger than one tile")
    previous_width = width
    for level, entries in enumerate(overviews, start=1):
        if _TAG_TILE_WIDTH not in entries:
            problems.append(f"overview {level} is not tiled")
        level_width = entries.get(_TAG_IMAGE_WIDTH, [0])[0]
        if level_width > previous_width:
            problems.append(f"overview {level} is larger than the level before it")
        previous_width = level_width

    first_data = min(
        (offset for entries in ifds for offset, size in _data_blocks(entries) if size > 0), default=None
    )
    if first_data is not None and max(ifd_offsets) > first_data:
        problems.append("an IFD is stored after image data (IFDs must all come first)")

    def start_of(entries) -> Optional[int]:
        blocks = [offset for offset, size in _data_blocks(entries) if size > 0]
        return min(blocks) if blocks else None

    starts = [start_of(entries) for entries in [main] + overviews]
    ordered = [s for s in starts[::-1] if s is not None]  # smallest overview first, main last
    if ordered != sorted(ordered):
        problems.append("image data is not ordered from the smallest overview to full resolution")
    main_blocks = [offset for offset, size in _data_blocks(main) if size > 0]
    if main_blocks != sorted(main_blocks):
        problems.append("full-resolution tiles are not in row-major order")
    return problems


def _data_blocks(entries) -> list[tuple[int, int]]:
    offsets = entries.get(_TAG_TILE_OFFSETS) or entries.get(_TAG_STRIP_OFFSETS) or []
    sizes = entries.get(_TAG_TILE_BYTE_COUNTS) or entries.get(_TAG_STRIP_BYTE_COUNTS) or []
    return list(zip(offsets, sizes))


_TAGS_READ = frozenset((
    _TAG_NEW_SUBFILE_TYPE, _TAG_IMAGE_WIDTH, _TAG_IMAGE_LENGTH, _TAG_STRIP_OFFSETS, _TAG_STRIP_BYTE_COUNTS,
    _TAG_TILE_WIDTH, _TAG_TILE_OFFSETS, _TAG_TILE_BYTE_COUNTS,
))
_TYPE_FORMATS = {1: "B", 3: "H", 4: "I", 16: "Q", 2: "B", 7: "B", 6: "b", 8: "h", 9: "i", 17: "q", 11: "f", 12: "d"}


def _read_ifd(data: bytes, offset: int, endian: str, big: bool):
    count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size = struct.calcsize(count_format)
    (count,) = struct.unpack_from(endian + count_format, data, offset)
    entries: dict[int, list[int]] = {}
    position = offset + count_size
    for _ in range(count):
        if big:
            tag, kind, n = struct.unpack_from(endian + "HHQ", data, position)
            value_position = position + 12
            inline = 8
        else:
            tag, kind, n = struct.unpack_from(endian + "HHI", data, position)
            value_position = position + 8
            inline = 4
        fmt = _TYPE_FORMATS.get(kind)
        if fmt is not None and tag in _TAGS_READ:
            size = struct.calcsize(fmt) * n
            where = value_position
            if size > inline:
                (where,) = struct.unpack_from(endian + offset_format, data, value_position)
            entries[tag] = list(struct.unpack_from(endian + fmt * n, data, where))
        position += entry_size
    (next_ifd,) = struct.unpack_from(endian + offset_format, data, position)
    return entries, next_ifd

