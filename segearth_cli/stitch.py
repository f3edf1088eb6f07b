"""Blend window probabilities into one seamless scene-sized answer, row block by row block."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
