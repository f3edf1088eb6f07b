"""What the pipeline needs from a model, and the adapters that provide it.

The pipeline hands over square RGB windows and questions and gets mask logits back; it
never sees the network inside.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Segmenter(Protocol):
    #: Recorded in every output so a result can be traced to what produced it.
    name: str
    #: Side of the square input the segmenter expects, in pixels.
    input_size: int

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        """``windows``: uint8 ``(B, 3, S, S)`` RGB, padding pixels 0.

        Returns float32 mask logits ``(B, M, S, S)`` for the ``M`` questions.
        """
        ...
