"""What the pipeline needs from a model, and the adapters that provide it.

The pipeline hands over square RGB windows and questions and gets mask logits back; it
never sees the network inside.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

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


class PixelFunctionSegmenter:
    """Logits computed pixel by pixel from the window's own values: a stand-in with a known answer.

    ``fn`` maps uint8 windows ``(B, 3, S, S)`` to logits ``(B, S, S)``; every question gets
    the same plane. A scene whose pixel values encode map coordinates lets a test predict
    the stitched answer at every pixel without running the pipeline.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], input_size: int = 1024, name: str = "pixel-function"):
        self.fn = fn
        self.input_size = int(input_size)
        self.name = name

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        plane = np.asarray(self.fn(windows), dtype=np.float32)
        expected = (windows.shape[0], self.input_size, self.input_size)
        if plane.shape != expected:
            raise ValueError(f"pixel function returned shape {plane.shape}, expected {expected}")
        return np.repeat(plane[:, None], len(questions), axis=1)


class ConstantSegmenter:
    """The same logit everywhere, at almost no cost: measures the pipeline without a model."""

    def __init__(self, value: float = 0.0, input_size: int = 1024, name: str = "constant"):
        self.value = float(value)
        self.input_size = int(input_size)
        self.name = name
        self._plane = np.full((self.input_size, self.input_size), self.value, dtype=np.float32)

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        # A read-only broadcast view: no per-call allocation of B x M planes.
        return np.broadcast_to(self._plane, (windows.shape[0], len(questions), self.input_size, self.input_size))


class ModelSegmenter:
    """Adapts ``segearth_model.predictor.MaskPredictor`` (torch in, torch out) to numpy.

    torch is only touched through the predictor, so importing the pipeline stays fast.
    """

    def __init__(self, predictor):
        self.predictor = predictor
        self.name = str(predictor.name)
        self.input_size = int(predictor.input_size)

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        import torch

        images = torch.from_numpy(np.ascontiguousarray(windows))
        with torch.inference_mode():
            logits = self.predictor.predict(images, list(questions))
        return logits.detach().to(device="cpu", dtype=torch.float32).numpy()
