"""The one-thread reference run of a window plan: read, segment, blend, one after the other.

The command line runs plans through ``segearth_cli.executor``; tests compare it (and the
geometry oracle's expectations) with this plain loop, which has no threads to get wrong.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from segearth_cli.stitch import RowBlock, Stitcher, window_logits
from segearth_cli.windows import Window, WindowPlan


def stream_row_blocks(
    reader,
    plan: WindowPlan,
    segmenter,
    questions: Sequence[str],
    batch_size: int = 1,
    on_window: Optional[Callable[[Window, bool], None]] = None,
) -> Iterator[RowBlock]:
    """Read, segment and stitch every window of ``plan``; yield the scene's RowBlocks in order.

    Windows without a valid pixel are skipped without a model call. Windows reach the
    segmenter ``batch_size`` at a time. ``reader.read`` is called once per window, in plan
    order; ``on_window(window, ran_model)`` after each read (for progress and counts).
    """
    stitcher = Stitcher(plan, len(questions))
    # Windows read since the last model call, in plan order, with their validity (None for
    # a window that has no valid pixel); ``batch`` holds the RGB of those that do.
    queue: list[tuple[Window, Optional[np.ndarray]]] = []
    batch: list[np.ndarray] = []

    def drain() -> Iterator[RowBlock]:
        logits = window_logits(segmenter, np.stack(batch), questions, plan.input_size) if batch else None
        position = 0
        for window, valid in queue:
            if valid is None:
                yield from stitcher.skip(window)
            else:
                yield from stitcher.add(window, logits[position], valid)
                position += 1
        queue.clear()
        batch.clear()

    for window in plan.windows:
        rgb, valid = reader.read(window)
        has_valid = bool(valid.any())
        queue.append((window, valid if has_valid else None))
        if has_valid:
            batch.append(rgb)
        if on_window is not None:
            on_window(window, has_valid)
        if len(batch) >= batch_size or (not batch and queue):
            yield from drain()
    yield from drain()
    yield from stitcher.finish()
