"""Mixed precision: the image encoder and the language model in bfloat16, the mask heads in float32.

Cast to bfloat16 throughout, the network moves mask logits by a few tenths and flips up to
0.2% of a window's confidently classified pixels (README, "Precision"). Almost all of the
arithmetic is in Swin, the projector and Phi; the heads that turn their features into a
mask (the description projection, the pixel decoder and the mask decoder) are small, and
in float32 they keep the mask closer to the float32 one.

Each float32 head casts its floating inputs to float32 on entry (a forward pre-hook), so
the modules themselves need no knowledge of the scheme.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Attribute names of SegEarthR1's heads that stay in float32.
FLOAT32_HEADS = (
    "text_projector",
    "origin_SEG_token_projector",
    "local_project",
    "d_layers",
    "SEG_token_projector",
    "pixel_decoder",
    "predictor",
)


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floating(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _cast_floating(item, dtype) for key, item in value.items()}
    return value


def _inputs_to_float32(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _cast_floating(args, torch.float32), _cast_floating(kwargs, torch.float32)


def apply_mixed_precision(model: nn.Module, low: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast every part of a float32 ``SegEarthR1`` but :data:`FLOAT32_HEADS` to ``low``, in place.

    The model's ``dtype`` (what its inputs are cast to) becomes ``low``.
    """
    names = {name for name, _ in model.named_children()}
    missing = set(FLOAT32_HEADS) - names
    if missing:
        raise ValueError(f"mixed precision: the model has no part named {sorted(missing)}")
    for name, child in model.named_children():
        if name in FLOAT32_HEADS:
            child.float()
            child.register_forward_pre_hook(_inputs_to_float32, with_kwargs=True)
        else:
            child.to(low)
    for parameter in model.parameters(recurse=False):
        parameter.data = parameter.data.to(low)
    return model
