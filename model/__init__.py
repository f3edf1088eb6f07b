"""SegEarth-R1 in plain PyTorch.

Importing the package is cheap: the network, the loader and transformers are imported
on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import SegEarthR1Config

_LAZY = {
    "load_pretrained": "checkpoint",
    "ModelLoadError": "checkpoint",
    "CheckpointError": "checkpoint",
    "ModelNotAvailableError": "checkpoint",
    "convert_checkpoint_state_dict": "checkpoint",
    "save_release_layout": "checkpoint",
    "SegEarthR1": "segearth_r1",
    "MaskPredictor": "predictor",
    "TINY_RANDOM": "tiny_random",
    "PLACEHOLDER_NOTICE": "tiny_random",
}

__all__ = ["SegEarthR1Config", *_LAZY]

if TYPE_CHECKING:
    from .checkpoint import (
        CheckpointError,
        ModelLoadError,
        ModelNotAvailableError,
        convert_checkpoint_state_dict,
        load_pretrained,
        save_release_layout,
    )
    from .predictor import MaskPredictor
    from .segearth_r1 import SegEarthR1
    from .tiny_random import PLACEHOLDER_NOTICE, TINY_RANDOM


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
