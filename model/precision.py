"""Device and dtype spellings, checked without importing torch.

The command line rejects ``--device tpu`` or ``--dtype int8`` before paying for the torch
import; :mod:`.device` resolves the same spellings to torch objects, so both agree.
"""

from __future__ import annotations

import re

AUTO = "auto"
#: Swin, the projector and Phi in bfloat16, the mask heads in float32 (see :mod:`.mixed_precision`).
MIXED = "mixed"
#: The precision of the paper's evaluation; a model computing in it runs the official
#: numerics (weights rounded through float16, rotary tables built in float16).
OFFICIAL = "float32"
#: What ``auto`` picks on a GPU: the fastest precision that moved no confident pixel of
#: the fixture or of the full-size windows measured (README, "Precision").
AUTO_ON_GPU = "float16"

#: Every accepted dtype spelling -> its canonical name (a ``torch`` attribute name, or ``mixed``).
DTYPE_SPELLINGS = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    MIXED: MIXED,
}

_DEVICE_SPELLING = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_dtype_spelling(text: str) -> str:
    """``"auto"`` or the canonical name (``float32``, ``bfloat16``, ``float16``, ``mixed``) of ``text``."""
    spelling = str(text).lower()
    if spelling == AUTO:
        return AUTO
    try:
        return DTYPE_SPELLINGS[spelling]
    except KeyError:
        raise ValueError(
            f"unknown dtype {text!r}; expected auto, float32 (fp32), bfloat16 (bf16), float16 (fp16) or {MIXED}"
        ) from None


_GPU_LIST_SPELLING = re.compile(r"^cuda:\d+(,cuda:\d+)+$")


#: Above any machine's GPU count; larger indexes overflow torch's device type.
MAX_GPU_INDEX = 1023


def check_device_spelling(text: str) -> str:
    """``text`` if it names a device the loader can use, or several GPUs (``cuda:0,cuda:2``); ValueError otherwise."""
    spelling = str(text)
    indexes = [int(index) for index in re.findall(r":(\d+)", spelling)]
    if any(index > MAX_GPU_INDEX for index in indexes):
        raise ValueError(f"GPU index {max(indexes)} is beyond any machine (at most {MAX_GPU_INDEX})")
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


def auto_precision(device_type: str) -> str:
    """The precision ``auto`` means on a device of this type (``cuda``, ``mps``, ``cpu``)."""
    return AUTO_ON_GPU if device_type in ("cuda", "mps") else OFFICIAL
