"""SegEarth-R1 in plain PyTorch.

Importing the package is cheap: the network, the loader and transformers are imported
on first use of the names below. :mod:`.names`, :mod:`.errors`, :mod:`.precision`,
:mod:`.hub` and :mod:`.tokenizer` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import SegEarthR1Config

_LAZY = {
    "load_pretrained": "loading",
    "ModelLoadError": "errors",
    "CheckpointError": "errors",
    "ModelNotAvailableError": "errors",
    "SegEarthR1": "segearth_r1",
    "MaskPredictor": "predictor",
    "TINY_RANDOM": "names",
    "PLACEHOLDER_NOTICE": "names",
}

__all__ = ["SegEarthR1Config", *_LAZY]

if TYPE_CHECKING:
    from .errors import CheckpointError, ModelLoadError, ModelNotAvailableError
    from .loading import load_pretrained
    from .names import PLACEHOLDER_NOTICE, TINY_RANDOM
    from .predictor import MaskPredictor
    from .segearth_r1 import SegEarthR1


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
