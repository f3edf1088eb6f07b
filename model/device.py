"""Where the network runs and in which precision: device and dtype names -> torch objects."""

from __future__ import annotations

import torch

from .precision import AUTO, MIXED, OFFICIAL, auto_precision, check_device_spelling, check_dtype_spelling, device_names


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_devices(device: str | torch.device = AUTO) -> list[torch.device]:
    """Every device a spelling names, one per model copy.

    A list (``cuda:0,cuda:2``) names each of its GPUs; ``cuda`` (or ``auto`` resolving to
    it) names every visible GPU when there are several; anything else names one device.
    """
    if isinstance(device, torch.device):
        return [device]
    names = device_names(check_device_spelling(device))
    if len(names) > 1:
        resolved = [resolve_device(name) for name in names]
        count = torch.cuda.device_count()
        missing = [str(d) for d in resolved if d.index >= count]
        if missing:
            raise ValueError(f"device {missing[0]!r} requested but this machine has {count} visible GPU(s)")
        return resolved
    single = resolve_device(device)
    if single.type == "cuda" and single.index is None and torch.cuda.device_count() > 1:
        return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    return [single]


def resolve_device(device: str | torch.device = AUTO) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; otherwise one of the spellings of :mod:`.precision`.

    Of a list of GPUs, the first.
    """
    if isinstance(device, torch.device):
        return device
    spelling = device_names(check_device_spelling(device))[0]
    if spelling == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(spelling)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but this torch build sees no CUDA device")
    if resolved.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return resolved


def resolve_precision(
    dtype: str | torch.dtype = AUTO, device: torch.device | None = None, *, official_numerics: bool = False
) -> str:
    """What the model computes in: ``float32``, ``bfloat16``, ``float16`` or ``mixed``.

    ``auto`` is float16 on a GPU and float32 elsewhere (:func:`.precision.auto_precision`),
    and always float32 when the official numerics are asked for.
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point type")
        return str(dtype).removeprefix("torch.")
    name = check_dtype_spelling(dtype)
    if name != AUTO:
        return name
    if official_numerics or device is None:
        return OFFICIAL
    return auto_precision(device.type)


def resolve_dtype(
    dtype: str | torch.dtype = AUTO, device: torch.device | None = None, *, official_numerics: bool = False
) -> torch.dtype:
    """The dtype the weights are loaded in; mixed precision loads float32 and casts most parts afterwards."""
    precision = resolve_precision(dtype, device, official_numerics=official_numerics)
    return torch.float32 if precision == MIXED else getattr(torch, precision)
