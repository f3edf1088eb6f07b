"""Blend window answers into one seamless scene-sized answer, row block by row block.

Each window's logits are cropped to its destination rectangle and mapped back onto its
source rectangle by the official original-size rule (:func:`logits_to_footprint`: bilinear,
``align_corners=False``, on the logits; nothing at the file's own resolution); only then
do they become probabilities, which are added with a weight into accumulators that cover
only the rows the current grid row of windows can still touch.

The weight is separable: 1 inside the window, a raised-cosine ramp over the ``overlap``
source pixels at each side that has a neighbour, and no ramp at the scene border, so edge
pixels keep full weight. Opposite ramps of two neighbours sum to exactly 1, every weight is
strictly positive, and the blend therefore changes smoothly from one window to the next:
no seams. Pixels that were invalid in a window's input carry no weight, so a pixel is valid
in the output exactly when some window read it as valid.

Rows are released as soon as the next window in plan order starts below them; memory is
``(M + 1)`` float32 planes of scene width by window height, never the scene height.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from .windows import Window, WindowPlan

#: Most rows per RowBlock; bounds the memory of each block handed to the sinks.
DEFAULT_BLOCK_ROWS = 256


@dataclass(frozen=True)
class RowBlock:
    """Finished full-width rows of the answer: no later window can change them.

    ``probabilities``: float32 ``(M, height, scene_width)`` in [0, 1], one plane per question.
    ``valid``: bool ``(height, scene_width)``; False where the input pixel was invalid
    (nodata, alpha, mask) or no window covered it.
    """

    row_off: int
    probabilities: np.ndarray
    valid: np.ndarray

    @property
    def height(self) -> int:
        return int(self.valid.shape[0])


def edge_ramp(length: int, ramp: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D blend weight of a window side: raised-cosine ramps of ``ramp`` px where it has neighbours.

    ``ramp[t] + ramp[ramp - 1 - t] == 1``, so two neighbours overlapping by ``ramp`` px
    share every overlap pixel with weights summing to one.
    """
    weight = np.ones(length, dtype=np.float32)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        t = (np.arange(ramp, dtype=np.float64) + 0.5) / ramp
        rise = (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)
        if at_start:
            weight[:ramp] = rise
        if at_end:
            weight[length - ramp:] = rise[::-1]
    return weight


class _AxisMap:
    """Bilinear taps mapping ``n_in`` canvas pixels onto ``n_out`` source pixels along one axis.

    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` along one axis,
    computed the same way in float32: output pixel ``i`` samples the input at
    ``max((i + 0.5) * n_in / n_out - 0.5, 0)``, between the two neighbouring input pixels,
    with no antialiasing when shrinking. ``taps`` (n_out, 2) and ``weights`` (n_out, 2).
    """

    def __init__(self, n_in: int, n_out: int):
        scale = np.float64(np.float32(n_in) / np.float32(n_out))
        # torch rounds the source coordinate once (a fused multiply-add): the float64 product
        # of the float32 scale is exact, so rounding it to float32 afterwards matches.
        x = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
        np.maximum(x, np.float32(0.0), out=x)
        first = np.minimum(x.astype(np.intp), n_in - 1)
        second = np.minimum(first + 1, n_in - 1)
        frac = np.clip(x - first.astype(np.float32), np.float32(0.0), np.float32(1.0))
        self.taps = np.stack([first, second], axis=1)
        self.weights = np.stack([np.float32(1.0) - frac, frac], axis=1)
        self.nearest = _validity_taps(n_in, n_out)


def _validity_taps(n_canvas: int, n_source: int) -> np.ndarray:
    """For each source pixel, the canvas pixel whose validity is its own.

    Validity went onto the canvas by OpenCV's ``INTER_NEAREST`` (see
    :func:`~segearth_cli.scene.canvas_validity`): canvas pixel ``j`` shows source pixel
    ``forward[j]``. Each source pixel takes back the first canvas pixel that shows it, so an
    enlarged window (a small scene in whole mode) gives back exactly the validity it was
    given. A source pixel that no canvas pixel shows (a shrunken window) takes the canvas
    pixel nearest its centre.
    """
    sources = np.arange(n_source)
    # OpenCV's own mapping, from a row of source indexes (exact in float32 below 2**24).
    forward = cv2.resize(sources.astype(np.float32)[None, :], (n_canvas, 1), interpolation=cv2.INTER_NEAREST)
    forward = forward[0].astype(np.intp)
    centres = (sources.astype(np.float64) + 0.5) * (n_canvas / n_source)
    taps = np.minimum(np.floor(centres).astype(np.intp), n_canvas - 1)
    first = np.searchsorted(forward, sources, side="left")
    shown = first < n_canvas
    shown[shown] = forward[first[shown]] == sources[shown]
    taps[shown] = first[shown]
    return taps


def logits_to_footprint(logits: np.ndarray, height: int, width: int, rows: slice = slice(None)) -> np.ndarray:
    """A window's logits (M, h, w), cropped to its destination rectangle, at its footprint size.

    The official original-size rule: the logits are resized to ``height`` x ``width`` with
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no
    antialiasing), and only the resized logits become probabilities, so the mask is
    ``logit > 0`` at the footprint's own resolution. Returns float32 (M, len(rows), width)
    for the output rows ``rows`` (all by default; strips keep a large footprint's memory small).
    Along each axis the interpolation is that of :class:`_AxisMap`; columns are combined
    before rows, in the order torch uses.
    """
    planes = np.asarray(logits, dtype=np.float32)
    row_map, col_map = _AxisMap(planes.shape[1], height), _AxisMap(planes.shape[2], width)
    return _resample(planes, row_map, col_map, rows)


def _source_valid(canvas_valid: np.ndarray, rows: _AxisMap, cols: _AxisMap, row_range: slice = slice(None)) -> np.ndarray:
    """A resampled window's validity on its source rows ``row_range``: the nearest canvas pixel's."""
    return canvas_valid[rows.nearest[row_range][:, None], cols.nearest[None, :]]


def _resample(planes: np.ndarray, rows: _AxisMap, cols: _AxisMap, row_range: slice) -> np.ndarray:
    """(M, h_in, w_in) canvas planes -> (M, rows in row_range, w_out) source planes."""
    taps, weights = rows.taps[row_range], rows.weights[row_range]
    if len(taps) == 0:
        return np.zeros((planes.shape[0], 0, len(cols.taps)), dtype=np.float32)
    # Only the input rows this strip reads are interpolated across.
    low, high = int(taps.min()), int(taps.max()) + 1
    band = planes[:, low:high]
    across = band[:, :, cols.taps[:, 0]] * cols.weights[:, 0]
    across += band[:, :, cols.taps[:, 1]] * cols.weights[:, 1]
    out = across[:, taps[:, 0] - low] * weights[:, 0][None, :, None]
    out += across[:, taps[:, 1] - low] * weights[:, 1][None, :, None]
    return out


class Stitcher:
    """Streams the weighted blend of a plan's windows as :class:`RowBlock` s.

    Feed every window of ``plan`` in plan order, each exactly once, through :meth:`add`
    (logits from the model) or :meth:`skip` (no valid pixel, no model call). Both
    return an iterator of the RowBlocks that became final; consume it before the next call.
    :meth:`finish` returns the rest. Rows come out top to bottom, each exactly once.
    """

    def __init__(self, plan: WindowPlan, num_questions: int, block_rows: int = DEFAULT_BLOCK_ROWS):
        if num_questions < 1:
            raise ValueError("at least one question is needed")
        if len(plan) == 0:
            raise ValueError("the plan has no windows")
        self.width = int(plan.scene_width)
        self.height = int(plan.scene_height)
        self.plan = plan
        self.num_questions = int(num_questions)
        self.block_rows = max(1, int(block_rows))
        self._next = 0  # index in plan of the next window expected
        self._released = 0  # rows [0, _released) have been handed out
        self._pending: Optional[Iterator[RowBlock]] = None
        #: Whether windows may arrive as probabilities over their footprint
        #: (:meth:`add_probabilities`): only when no footprint outgrows its canvas, so such an
        #: answer is never larger than the logits it replaces.
        self.takes_probabilities = plan.footprint <= plan.input_size
        # A single window is the only contributor to every row it covers: its rows can be
        # mapped and released strip by strip, so whole mode on a huge scene stays bounded.
        if len(plan) == 1:
            self._blend = None
        elif plan.footprint > plan.input_size:
            self._blend = _DeferredBlend(plan, self.num_questions)
        else:
            self._blend = _WindowBlend(plan, self.num_questions)

    def add(self, window: Window, logits: np.ndarray, valid: np.ndarray) -> Iterator[RowBlock]:
        """Blend one window's canvas logits (M, S, S) with its canvas validity (S, S)."""
        expected = (self.num_questions, window.size, window.size)
        if logits.shape != expected:
            raise ValueError(f"logits have shape {logits.shape}, expected {expected}")
        if valid.shape != expected[1:]:
            raise ValueError(f"valid has shape {valid.shape}, expected {expected[1:]}")
        if self.takes_probabilities:
            return self.add_probabilities(window, window_probabilities(logits, window), valid)
        self._take(window)
        rows, cols = window.dst_slices
        planes, canvas_valid = np.asarray(logits[:, rows, cols], dtype=np.float32), valid[rows, cols]
        if self._blend is None:
            return self._hold(self._release_single(window, (planes, canvas_valid), mapped=False))
        self._blend.add(window, planes, canvas_valid)
        return self._after_window()

    def add_probabilities(self, window: Window, probabilities: np.ndarray, valid: np.ndarray) -> Iterator[RowBlock]:
        """Blend one window's answer already mapped onto its footprint (:func:`window_probabilities`).

        ``probabilities``: float32 (M, height, width); the stitcher may overwrite it.
        ``valid``: the canvas validity (S, S). Only when :attr:`takes_probabilities`.
        """
        if not self.takes_probabilities:
            raise RuntimeError("this plan's footprints outgrow the canvas: add logits instead")
        expected = (self.num_questions, window.height, window.width)
        if probabilities.shape != expected:
            raise ValueError(f"probabilities have shape {probabilities.shape}, expected {expected}")
        if valid.shape != (window.size, window.size):
            raise ValueError(f"valid has shape {valid.shape}, expected {(window.size, window.size)}")
        self._take(window)
        rows, cols = window.dst_slices
        probabilities, canvas_valid = np.asarray(probabilities, dtype=np.float32), valid[rows, cols]
        if self._blend is None:
            return self._hold(self._release_single(window, (probabilities, canvas_valid), mapped=True))
        self._blend.add(window, probabilities, canvas_valid)
        return self._after_window()

    def skip(self, window: Window) -> Iterator[RowBlock]:
        """Declare a window that had no valid pixel: it contributes nothing, rows still move on."""
        self._take(window)
        if self._blend is None:
            return self._hold(self._release_single(window, None))
        return self._after_window()

    def finish(self) -> Iterator[RowBlock]:
        """The remaining rows, after every window was added or skipped."""
        if self._next != len(self.plan):
            raise RuntimeError(f"{len(self.plan) - self._next} window(s) of the plan were never added or skipped")
        if self._pending is not None:
            raise RuntimeError("consume the RowBlocks returned by the previous add()/skip() first")
        return self._hold(self._release(self.height))

    def _take(self, window: Window) -> None:
        if self._pending is not None:
            raise RuntimeError("consume the RowBlocks returned by the previous add()/skip() first")
        if self._next >= len(self.plan) or self.plan.windows[self._next] != window:
            raise ValueError(f"windows must be fed in plan order; expected #{self._next}, got {window}")
        self._next += 1

    def _after_window(self) -> Iterator[RowBlock]:
        if self._next < len(self.plan):
            upto = min(self.plan.windows[self._next].row_off, self.height)
        else:
            upto = self.height
        if upto <= self._released:
            return iter(())
        return self._hold(self._release(upto))

    def _hold(self, blocks: Iterator[RowBlock]) -> Iterator[RowBlock]:
        def guarded() -> Iterator[RowBlock]:
            try:
                yield from blocks
            finally:
                self._pending = None

        self._pending = guarded()
        return self._pending

    def _release(self, upto: int) -> Iterator[RowBlock]:
        """Hand out rows [_released, upto) in blocks; no window still to come can change them."""
        while self._released < upto:
            start = self._released
            stop = min(upto, start + self.block_rows)
            if self._blend is None:  # a single window already released its rows
                block = _empty_block(self.num_questions, start, stop, self.width)
            else:
                block = self._blend.take_rows(start, stop)
            self._released = stop
            yield block
        if self._blend is not None:
            self._blend.slide(upto)

    def _release_single(self, window: Window, data, mapped: bool = False) -> Iterator[RowBlock]:
        """Map the only window back strip by strip; rows outside it are uncovered.

        ``data``: (planes, canvas validity), planes being canvas logits, or probabilities
        over the footprint when ``mapped``.
        """
        if data is not None:
            planes, canvas_valid = data
            row_map, col_map = _AxisMap(window.dst_height, window.height), _AxisMap(window.dst_width, window.width)
        while self._released < self.height:
            start = self._released
            stop = min(self.height, start + self.block_rows)
            block = _empty_block(self.num_questions, start, stop, self.width)
            lo, hi = max(start, window.row_off), min(stop, window.row_off + window.height)
            if data is not None and lo < hi:
                rows = slice(lo - window.row_off, hi - window.row_off)
                cols = slice(window.col_off, window.col_off + window.width)
                out_rows = slice(lo - start, hi - start)
                if window.native:
                    strip_valid = canvas_valid[rows]
                else:
                    strip_valid = _source_valid(canvas_valid, row_map, col_map, rows)
                if mapped:
                    strip = planes[:, rows]
                else:
                    strip = sigmoid(planes[:, rows] if window.native else _resample(planes, row_map, col_map, rows))
                block.probabilities[:, out_rows, cols] = np.where(strip_valid, strip, 0.0)
                block.valid[out_rows, cols] = strip_valid
            self._released = stop
            yield block


def _empty_block(num_questions: int, start: int, stop: int, width: int) -> RowBlock:
    """Rows [start, stop) that no window covered: probability 0, invalid."""
    return RowBlock(row_off=start, probabilities=np.zeros((num_questions, stop - start, width), dtype=np.float32),
                    valid=np.zeros((stop - start, width), dtype=bool))


class _WindowBlend:
    """Weighted sums of several windows over the scene rows they can still change.

    The accumulators cover scene rows ``[base, base + rows)``: from the oldest row not yet
    released down to the lowest row a window of the current grid row touches.
    """

    def __init__(self, plan: WindowPlan, num_questions: int):
        self.width = int(plan.scene_width)
        self.height = int(plan.scene_height)
        self.num_questions = num_questions
        self.rows = _rows_needed(plan)
        self._ramp = int(plan.overlap)
        self._base = 0
        self._acc = np.zeros((num_questions, self.rows, self.width), dtype=np.float32)
        self._wsum = np.zeros((self.rows, self.width), dtype=np.float32)
        self._weights_cache: dict = {}
        self._axis_cache: dict = {}

    def add(self, window: Window, probabilities: np.ndarray, canvas_valid: np.ndarray) -> None:
        """Add a window's probabilities over its footprint (M, height, width), weighted, onto its
        source rectangle; ``probabilities`` is overwritten."""
        row_map, col_map = self._axis_maps(window)
        if window.native:
            source_valid = canvas_valid
        else:
            source_valid = _source_valid(canvas_valid, row_map, col_map)
        weight = self._window_weight(window)
        if not source_valid.all():
            weight = weight * source_valid
        r0 = window.row_off - self._base
        r1 = r0 + window.height
        c0, c1 = window.col_off, window.col_off + window.width
        probabilities *= weight
        self._acc[:, r0:r1, c0:c1] += probabilities
        self._wsum[r0:r1, c0:c1] += weight

    def take_rows(self, start: int, stop: int) -> RowBlock:
        """The blend of scene rows [start, stop), which are then zeroed for the windows to come."""
        # Rows past the accumulators were touched by no window (a plan with gaps).
        b0 = start - self._base
        b1 = min(stop - self._base, self.rows)
        held = max(0, b1 - b0)
        shape = (self.num_questions, stop - start, self.width)
        # Rows the accumulators hold are all overwritten below; only uncovered ones need zeros.
        filled = held == stop - start
        probabilities = np.empty(shape, np.float32) if filled else np.zeros(shape, np.float32)
        valid = (np.empty if filled else np.zeros)((stop - start, self.width), dtype=bool)
        if held:
            wsum = self._wsum[b0:b1]
            acc = self._acc[:, b0:b1]
            np.greater(wsum, 0, out=valid[:held])
            if not valid[:held].all():
                # Where no weight arrived the accumulator is 0 too, so dividing by a tiny
                # positive number yields the 0 wanted there, without a masked division.
                # The weights are zeroed below, so they can hold the divisor. (Weights that
                # arrived are products of ramp values, far above 1e-30.)
                np.maximum(wsum, np.float32(1e-30), out=wsum)
            out = probabilities[:, :held]
            np.divide(acc, wsum, out=out)
            np.minimum(out, np.float32(1.0), out=out)
            # Reset these rows for the windows to come while they are still in cache.
            acc.fill(0)
            wsum.fill(0)
        return RowBlock(row_off=start, probabilities=probabilities, valid=valid)

    def slide(self, new_base: int) -> None:
        """Move the rows still open to the top; released rows were already zeroed."""
        shift = new_base - self._base
        if shift <= 0:
            return
        keep = self.rows - shift
        if keep > 0:
            self._acc[:, :keep] = self._acc[:, shift:]
            self._wsum[:keep] = self._wsum[shift:]
            # The rows the open ones came from; the rest of [keep, shift) is already zero.
            tail = max(keep, shift)
            self._acc[:, tail:] = 0
            self._wsum[tail:] = 0
        self._base = new_base

    def _axis_maps(self, window: Window) -> tuple[_AxisMap, _AxisMap]:
        key = (window.dst_height, window.height, window.dst_width, window.width)
        maps = self._axis_cache.get(key)
        if maps is None:
            maps = (_AxisMap(window.dst_height, window.height), _AxisMap(window.dst_width, window.width))
            self._axis_cache[key] = maps
        return maps

    def _window_weight(self, window: Window) -> np.ndarray:
        top = window.row_off > 0
        bottom = window.row_off + window.height < self.height
        left = window.col_off > 0
        right = window.col_off + window.width < self.width
        key = (window.height, window.width, top, bottom, left, right)
        weight = self._weights_cache.get(key)
        if weight is None:
            wy = edge_ramp(window.height, self._ramp, top, bottom)
            wx = edge_ramp(window.width, self._ramp, left, right)
            weight = wy[:, None] * wx[None, :]
            self._weights_cache[key] = weight
        return weight


class _DeferredBlend:
    """Weighted blend of windows whose footprint is larger than the canvas, computed as rows are released.

    A window is kept as its cropped canvas logits, which are smaller than its footprint,
    until every row it covers has been released; each released block is blended from the
    windows that cover it. Every source pixel is still mapped once per window, but memory is
    the kept canvases plus one block, not accumulators of footprint height across the scene.
    """

    def __init__(self, plan: WindowPlan, num_questions: int):
        self.width = int(plan.scene_width)
        self.height = int(plan.scene_height)
        self.num_questions = num_questions
        self._ramp = int(plan.overlap)
        self._kept: list[tuple[Window, np.ndarray, np.ndarray, _AxisMap, _AxisMap]] = []

    def add(self, window: Window, planes: np.ndarray, canvas_valid: np.ndarray) -> None:
        maps = (_AxisMap(window.dst_height, window.height), _AxisMap(window.dst_width, window.width))
        self._kept.append((window, np.array(planes, dtype=np.float32), np.array(canvas_valid), *maps))

    def take_rows(self, start: int, stop: int) -> RowBlock:
        probabilities = np.zeros((self.num_questions, stop - start, self.width), dtype=np.float32)
        wsum = np.zeros((stop - start, self.width), dtype=np.float32)
        for window, planes, canvas_valid, row_map, col_map in self._kept:
            lo, hi = max(start, window.row_off), min(stop, window.row_off + window.height)
            if lo >= hi:
                continue
            rows = slice(lo - window.row_off, hi - window.row_off)
            # The separable weight, built for these rows only: a footprint-sized one could be gigabytes.
            wy = edge_ramp(window.height, self._ramp, window.row_off > 0, window.row_off + window.height < self.height)
            wx = edge_ramp(window.width, self._ramp, window.col_off > 0, window.col_off + window.width < self.width)
            weight = wy[rows, None] * wx[None, :]
            weight *= _source_valid(canvas_valid, row_map, col_map, rows)
            strip = sigmoid(_resample(planes, row_map, col_map, rows))
            strip *= weight
            out_rows, cols = slice(lo - start, hi - start), slice(window.col_off, window.col_off + window.width)
            probabilities[:, out_rows, cols] += strip
            wsum[out_rows, cols] += weight
        valid = wsum > 0
        np.maximum(wsum, np.float32(1e-30), out=wsum)
        probabilities /= wsum
        np.minimum(probabilities, np.float32(1.0), out=probabilities)
        return RowBlock(row_off=start, probabilities=probabilities, valid=valid)

    def slide(self, new_base: int) -> None:
        """Forget the windows whose rows have all been released."""
        self._kept = [kept for kept in self._kept if kept[0].row_off + kept[0].height > new_base]


def _rows_needed(plan: WindowPlan) -> int:
    """Rows the accumulators must span: from the oldest unreleased row to the lowest row touched."""
    need = 0
    base = 0
    reach = 0
    windows = plan.windows
    for index, window in enumerate(windows):
        reach = max(reach, window.row_off + window.height)
        need = max(need, reach - base)
        if index + 1 < len(windows) and windows[index + 1].row_off != window.row_off:
            base = max(base, windows[index + 1].row_off)
    return max(need, 1)


def sigmoid(logits: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 probabilities from logits, without overflow warnings for large magnitudes.

    ``out`` (float32, the shape of ``logits``) receives the result; ``logits`` itself may be it.
    """
    out = np.negative(logits, dtype=np.float32, out=out)
    with np.errstate(over="ignore", under="ignore"):
        np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def window_logits(segmenter, canvases: np.ndarray, questions: Sequence[str], input_size: int) -> np.ndarray:
    """Mask logits (B, M, S, S) the segmenter gives the canvases (B, 3, S, S), shape checked.

    They stay logits: the official rule resizes logits to the footprint before the sigmoid
    (see :func:`logits_to_footprint`).
    """
    logits = segmenter.segment(canvases, questions)
    expected = (len(canvases), len(questions), input_size, input_size)
    if tuple(logits.shape) != expected:
        raise RuntimeError(f"segmenter {segmenter.name} returned logits of shape {logits.shape}, expected {expected}")
    return logits


def window_probabilities(logits: np.ndarray, window: Window) -> np.ndarray:
    """A window's canvas logits (M, S, S) as float32 probabilities (M, height, width) over its footprint.

    Cut to the destination rectangle, mapped by :func:`logits_to_footprint` when the window
    is resampled, then the sigmoid: the official original-size rule, on the host.
    """
    rows, cols = window.dst_slices
    planes = np.asarray(logits[:, rows, cols], dtype=np.float32)
    if not window.native:
        mapped = logits_to_footprint(planes, window.height, window.width)
        return sigmoid(mapped, out=mapped)
    return sigmoid(planes)


def footprint_probabilities(segmenter, canvases: np.ndarray, questions: Sequence[str],
                            windows: Sequence[Window], input_size: int) -> list[np.ndarray]:
    """Each window's answer as probabilities over its footprint (see :func:`window_probabilities`).

    A segmenter that maps answers back where it computes them (``segment_footprints``, a
    GPU's) does so there; any other answers with logits, mapped here.
    """
    own = getattr(segmenter, "segment_footprints", None)
    if own is None:
        return probabilities_on_host(segmenter, canvases, questions, windows, input_size)
    answers = own(canvases, questions, windows)
    if len(answers) != len(windows):
        raise RuntimeError(f"segmenter {segmenter.name} answered {len(answers)} of {len(windows)} windows")
    for answer, window in zip(answers, windows):
        expected = (len(questions), window.height, window.width)
        if tuple(answer.shape) != expected:
            raise RuntimeError(f"segmenter {segmenter.name} returned probabilities of shape {answer.shape}, "
                               f"expected {expected}")
    return answers


def probabilities_on_host(segmenter, canvases: np.ndarray, questions: Sequence[str], windows: Sequence[Window],
                          input_size: int) -> list[np.ndarray]:
    """:func:`footprint_probabilities` from the segmenter's logits, mapped here."""
    logits = window_logits(segmenter, canvases, questions, input_size)
    return [window_probabilities(planes, window) for planes, window in zip(logits, windows)]
