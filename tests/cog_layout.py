"""A Cloud-Optimized GeoTIFF layout check, read straight from the TIFF structure.

Tests use it to confirm that ``--cog`` outputs are laid out the way a COG validator expects:
tiled, overviews present, all IFDs before the image data, overview data before
full-resolution data.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Optional

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
    ifds, ifd_offsets, problem = _read_ifds(data)
    if problem is not None:
        return [problem]
    # Full resolution and reduced-resolution images; transparency mask IFDs are left out.
    images = [(entries.get(_TAG_NEW_SUBFILE_TYPE, [0])[0], entries) for entries in ifds]
    images = [(subfile, entries) for subfile, entries in images if not subfile & 4]
    main_subfile, main = images[0]
    overviews = [entries for subfile, entries in images[1:] if subfile & 1]
    problems = ["the first image is a reduced-resolution image"] if main_subfile & 1 else []
    problems += _pyramid_problems(main, overviews)
    problems += _order_problems(ifds, ifd_offsets, main, overviews)
    return problems


def _read_ifds(data) -> tuple[list[dict], list[int], Optional[str]]:
    """(IFD entries, IFD offsets, the problem that stopped the reading or None)."""
    if data[:2] not in (b"II", b"MM"):
        return [], [], "not a TIFF file"
    endian = "<" if data[:2] == b"II" else ">"
    magic = struct.unpack(endian + "H", data[2:4])[0]
    if magic == 42:
        big = False
        next_ifd = struct.unpack(endian + "I", data[4:8])[0]
    elif magic == 43:
        big = True
        next_ifd = struct.unpack(endian + "Q", data[8:16])[0]
    else:
        return [], [], "not a TIFF file"
    ifds, ifd_offsets = [], []
    while next_ifd:
        ifd_offsets.append(next_ifd)
        entries, next_ifd = _read_ifd(data, next_ifd, endian, big)
        ifds.append(entries)
        if len(ifds) > 64:
            return ifds, ifd_offsets, "too many IFDs"
    return ifds, ifd_offsets, None if ifds else "no image directory"


def _pyramid_problems(main: dict, overviews: list[dict]) -> list[str]:
    problems = []
    if _TAG_TILE_WIDTH not in main:
        problems.append("the main image is not tiled")
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
    return problems


def _order_problems(ifds: list[dict], ifd_offsets: list[int], main: dict, overviews: list[dict]) -> list[str]:
    problems = []
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

