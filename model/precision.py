"""Device and dtype spellings, checked without importing torch.

The command line rejects ``--device tpu`` or ``--dtype int8`` before paying for the torch
import; :mod:`.device` resolves the same spellings to torch objects, so both agree.
"""

from __future__ import annotations

import re

AUTO = "auto"

#: Every accepted dtype spelling -> its canonical name (a ``torch`` attribute name).
DTYPE_SPELLINGS = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}

_DEVICE_SPELLING = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_dtype_spelling(text: str) -> str:
    """``"auto"`` or the canonical name (``float32``, ``bfloat16``, ``float16``) of ``text``."""
    spelling = str(text).lower()
    if spelling == AUTO:
        return AUTO
    try:
        return DTYPE_SPELLINGS[spelling]
    except KeyError:
        raise ValueError(f"unknown dtype {text!r}; expected auto, float32, bfloat16 or float16") from None


_GPU_LIST_SPELLING = re.compile(r"^cuda:\d+(,cuda:\d+)+$")


def check_device_spelling(text: str) -> str:
    """``text`` if it names a device the loader can use, or several GPUs (``cuda:0,cuda:2``); ValueError otherwise."""
    spelling = str(text)
    if _GPU_LIST_SPELLING.match(spelling):
        names = device_names(spelling)
        if len(set(names)) != len(names):
            raise ValueError(f"device list {text!r} names a GPU twice")
        return spelling
    if not _DEVICE_SPELLING.match(spelling):
        raise ValueError(f"unknown device {text!r}; expected auto, cpu, cuda, cuda:N, a list cuda:N,cuda:M or mps")
    return spelling


def device_names(text: str) -> list[str]:
    """The devices a spelling names, one per model copy: ``cuda:0,cuda:2`` -> ``["cuda:0", "cuda:2"]``."""
    return str(text).split(",")
