"""A PNG quicklook: the scene, decimated, with the answer drawn over it for a person to look at.

The scene comes from a decimated read (overviews when the file has them). The answer is
reduced while the row blocks stream past: each quicklook pixel keeps the fraction of its
scene pixels that answer each question and the fraction that are valid, so memory is the
quicklook's size, never the scene's. A quicklook pixel is drawn as answer when at least
half of its valid scene pixels answer, and also when any does (as a thinner tint), so small
objects stay visible at low resolution. Each question gets its own colour: a
semi-transparent fill and an opaque outline. Pixels with no valid input are shown as a
grey hatch so that "no data" is never mistaken for "no answer". A legend strip below the
picture names the question behind each colour (and the hatch, when there is one), because
a quicklook is looked at away from the command that made it.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from ..errors import OutputError, first_line, one_line
from ..scene import open_scene, overview_size
from .raster import answer_mask

#: Fill colours (RGB), one per question, distinct on imagery and for common colour blindness.
PALETTE = (
    (255, 200, 0),
    (0, 170, 255),
    (255, 60, 160),
    (80, 230, 80),
    (170, 110, 255),
    (255, 120, 40),
)
FILL_ALPHA = 0.45
TINT_ALPHA = 0.25
HATCH = (96, 96, 96)
LEGEND_BACKGROUND = (32, 32, 32)
LEGEND_TEXT = (240, 240, 240)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class PreviewSink:
    """Accumulates a decimated answer from RowBlocks and writes the quicklook PNG on ``close()``.

    ``source`` gives the picture underneath: a SceneReader (its ``read_overview``), a Scene
    (the file is opened again for one decimated read, with the same bands), or a function
    ``overview(max_side) -> (rgb uint8 (3, h, w), valid bool (h, w))`` together with
    ``scene=`` (anything with ``width`` and ``height``). ``questions[i]`` is the text of
    probability plane ``i``; ``question_indexes`` picks the planes drawn (None: all), in
    the colours of ``PALETTE`` in that order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        source,
        questions: Sequence[str],
        question_indexes: Optional[Iterable[int]] = None,
        threshold: float = 0.5,
        max_side: int = 2048,
        scene=None,
    ):
        self.path = Path(path)
        self.questions = list(questions)
        self.question_indexes = list(range(len(self.questions)) if question_indexes is None else question_indexes)
        self.threshold = float(threshold)
        if hasattr(source, "read_overview"):
            scene = scene or source.scene
            rgb, valid = source.read_overview(max_side)
        elif callable(source):
            if scene is None:
                raise ValueError("PreviewSink needs scene= (width and height) with an overview function")
            rgb, valid = source(max_side)
        else:
            scene = source
            with open_scene(scene.path, bands=scene.bands) as reader:
                rgb, valid = reader.read_overview(max_side)
        self.width, self.height = int(scene.width), int(scene.height)
        self.out_width, self.out_height = overview_size(self.width, self.height, max_side)
        self._rgb = _fit(np.asarray(rgb), self.out_height, self.out_width)
        self._scene_valid = _fit(np.asarray(valid)[None], self.out_height, self.out_width)[0].astype(bool)

        # Column j of the scene falls in quicklook column (j * out_width) // width.
        column_cell = (np.arange(self.width, dtype=np.int64) * self.out_width) // self.width
        self._column_starts = np.searchsorted(column_cell, np.arange(self.out_width))
        self._column_counts = np.diff(self._column_starts, append=self.width).astype(np.float32)
        self._answer = np.zeros((len(self.question_indexes), self.out_height, self.out_width), dtype=np.float32)
        self._valid = np.zeros((self.out_height, self.out_width), dtype=np.float32)
        self._total = np.zeros((self.out_height, self.out_width), dtype=np.float32)
        self.closed = False

    def write(self, block) -> None:
        if block.height == 0:
            return
        rows = np.arange(block.row_off, block.row_off + block.height, dtype=np.int64)
        row_cell = (rows * self.out_height) // self.height
        cells, row_starts = np.unique(row_cell, return_index=True)

        def reduce(plane: np.ndarray) -> np.ndarray:
            across = np.add.reduceat(plane, self._column_starts, axis=1)
            return np.add.reduceat(across, row_starts, axis=0)

        valid = block.valid
        self._valid[cells] += reduce(valid.astype(np.float32))
        # Scene pixels per quicklook cell follow from the cell bounds; no need to reduce ones.
        row_counts = np.diff(row_starts, append=block.height).astype(np.float32)
        self._total[cells] += np.outer(row_counts, self._column_counts)
        for plane, index in enumerate(self.question_indexes):
            mask = answer_mask(block.probabilities[index], valid, self.threshold)
            self._answer[plane, cells] += reduce(mask.astype(np.float32))

    def close(self) -> None:
        if self.closed:
            return
        image = self.render()
        bgr = np.ascontiguousarray(image[..., ::-1])
        try:
            ok = cv2.imwrite(str(self.path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        except cv2.error as error:
            raise OutputError(f"{self.path}: cannot be written ({first_line(error)})") from None
        if not ok:
            raise OutputError(f"{self.path}: cannot be written")
        self.closed = True

    def abort(self) -> None:
        """Nothing was written yet (the PNG is written in one go by ``close``)."""

        self.closed = True

    def render(self) -> np.ndarray:
        """The quicklook as an RGB uint8 array: the map (``out_height`` rows), then the legend."""
        picture, has_invalid = self._render_map()
        entries = [(PALETTE[plane % len(PALETTE)], self.questions[index])
                   for plane, index in enumerate(self.question_indexes)]
        if has_invalid:
            entries.append((None, "no data"))
        return np.concatenate([picture, _legend(entries, self.out_width)], axis=0)

    def _render_map(self) -> tuple[np.ndarray, bool]:
        """The decimated scene with the answers drawn over it, and whether any pixel shows no data."""
        image = np.transpose(self._rgb, (1, 2, 0)).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            valid_fraction = np.where(self._total > 0, self._valid / np.maximum(self._total, 1), 0.0)
        invalid = (valid_fraction < 0.5) | ~self._scene_valid
        if invalid.any():
            hatch = _hatch(self.out_height, self.out_width)
            grey = np.array(HATCH, dtype=np.float32)
            image[invalid] = 0.25 * image[invalid] + 0.75 * grey
            image[invalid & hatch] = 0.5 * grey
        for plane in range(len(self.question_indexes)):
            colour = np.array(PALETTE[plane % len(PALETTE)], dtype=np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                fraction = np.where(self._valid > 0, self._answer[plane] / np.maximum(self._valid, 1), 0.0)
            filled = fraction >= 0.5
            touched = (fraction > 0) & ~filled
            image[filled] = (1 - FILL_ALPHA) * image[filled] + FILL_ALPHA * colour
            image[touched] = (1 - TINT_ALPHA) * image[touched] + TINT_ALPHA * colour
            outline_source = (filled | touched).astype(np.uint8)
            if outline_source.any():
                eroded = cv2.erode(outline_source, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
                outline = (outline_source > 0) & (eroded == 0)
                image[outline] = colour
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), bool(invalid.any())


def _legend(entries: Sequence[tuple[Optional[tuple[int, int, int]], str]], width: int) -> np.ndarray:
    """One row per entry: a swatch (a colour, or the no-data hatch for None) and its text.

    The row height follows the quicklook's width so the text stays readable at any size;
    text that does not fit is cut with "...".
    """
    row = int(np.clip(round(width / 40), 16, 36))
    pad = max(2, row // 6)
    thickness = 1 if row < 24 else 2
    scale = cv2.getFontScaleFromHeight(_FONT, max(6, row - 3 * pad), thickness)
    strip = np.empty((row * len(entries) + pad, width, 3), dtype=np.uint8)
    strip[:] = LEGEND_BACKGROUND
    swatch = row - 2 * pad
    text_left = pad + swatch + 2 * pad
    for number, (colour, text) in enumerate(entries):
        top = number * row + pad
        cell = strip[top : top + swatch, pad : pad + swatch]
        if colour is None:
            cell[:] = HATCH
            cell[_hatch(*cell.shape[:2])] = np.array(HATCH) // 2
        else:
            cell[:] = colour
        label = _fit_text(_printable(text), width - text_left - pad, scale, thickness)
        if label:
            cv2.putText(strip, label, (text_left, top + swatch - pad // 2), _FONT, scale, LEGEND_TEXT, thickness,
                        cv2.LINE_AA)
    return strip


def _hatch(height: int, width: int) -> np.ndarray:
    """Diagonal stripes 4 px wide: where the no-data pattern is dark, on the map and in the legend."""
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx + yy) // 4) % 2 == 0


def _printable(text: str) -> str:
    """The text in the ASCII the built-in font can draw: accents dropped, other letters as '?'."""
    decomposed = unicodedata.normalize("NFKD", one_line(text))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c if " " <= c <= "~" else "?" for c in plain)


def _fit_text(text: str, room: int, scale: float, thickness: int) -> str:
    def fits(candidate: str) -> bool:
        return cv2.getTextSize(candidate, _FONT, scale, thickness)[0][0] <= room

    if fits(text):
        return text
    while text and not fits(text + "..."):
        text = text[:-1]
    return text + "..." if text else ""


def _fit(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring an overview read to the quicklook size (they match unless the reader rounded differently)."""

    if array.shape[-2:] == (height, width):
        return array
    planes = [cv2.resize(plane.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) for plane in array]
    return np.stack(planes)
