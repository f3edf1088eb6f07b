"""Plan the windows a scene is cut into before it reaches the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One model input: a rectangle of the scene resampled into a square canvas.

    ``col_off, row_off, width, height`` is the source rectangle, in scene pixels, always
    inside the scene. It is resampled by ``scale`` (model pixels per scene pixel) and
    placed at ``dst_col_off, dst_row_off`` in the ``size`` x ``size`` canvas; the rest of
    the canvas is padding.
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
