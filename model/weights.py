"""Weight files of a checkpoint directory: which exist, what they hold, and their tensors.

safetensors files are read through the ``safetensors`` library; ``pytorch_model.bin`` files
are loaded weights-only, so a checkpoint can never run code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
from .names import PYTORCH_FILE, PYTORCH_INDEX, SAFETENSORS_FILE, SAFETENSORS_INDEX

# The safetensors dtype names a checkpoint of this network can hold.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_REMAP_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint, known before any of its bytes are read."""

    key: str
    path: Path
    shape: list[int]
    dtype: torch.dtype
    # .bin files only: the tensor, already mapped by torch.load.
    mapped: torch.Tensor | None = None


def _safetensors_reason(exc: SafetensorError) -> str:
    return str(exc).removeprefix("Error while deserializing header: ")[:200]


def _read_safetensors_entries(path: Path) -> list[TensorEntry]:
    try:
        # The library reports any failure to open as "No such file or directory": opening
        # here first gives the real reason (permission denied, above all).
        with open(path, "rb"):
            pass
        with safe_open(str(path), framework="pt") as handle:
            entries = []
            for key in handle.offset_keys():
                view = handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise CheckpointError(f"{path}: {key} has dtype {view.get_dtype()}, which no SegEarth-R1 tensor has")
                entries.append(TensorEntry(key, path, list(view.get_shape()), dtype))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except SafetensorError as exc:
        # The library checks that the header and the data cover the file exactly, so a cut
        # file fails here, before any tensor is read.
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({_safetensors_reason(exc)})") from exc
    return entries


def _read_pytorch_entries(path: Path) -> list[TensorEntry]:
    try:
        try:
            # mmap keeps the whole file out of memory; older (non-zip) files cannot be mapped.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    except Exception as exc:  # torch raises several unrelated types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({reason[:200]})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: does not hold a flat table of named tensors")
    return [TensorEntry(key, path, list(value.shape), value.dtype, mapped=value) for key, value in state.items()]


def _read_index(path: Path) -> list[Path]:
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a shard index (no weight_map)") from exc
    shards = []
    for name in files:
        # Shards lie beside the index: a name that leaves the folder is not a shard of this checkpoint.
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{path}: not a shard index (weight_map names {name!r}, not a file beside it)")
        shard = path.parent / name
        if not shard.is_file():
            first_key = next(k for k, v in weight_map.items() if v == name)
            raise CheckpointError(f"{shard}: missing (listed in {path.name} for {first_key})")
        shards.append(shard)
    return shards


def checkpoint_files(directory: Path) -> tuple[Path, list[Path]]:
    """(the file that names the checkpoint in messages, the weight files to read)."""
    if (directory / SAFETENSORS_FILE).is_file():
        return directory / SAFETENSORS_FILE, [directory / SAFETENSORS_FILE]
    if (directory / SAFETENSORS_INDEX).is_file():
        return directory / SAFETENSORS_INDEX, _read_index(directory / SAFETENSORS_INDEX)
    if (directory / PYTORCH_FILE).is_file():
        return directory / PYTORCH_FILE, [directory / PYTORCH_FILE]
    if (directory / PYTORCH_INDEX).is_file():
        return directory / PYTORCH_INDEX, _read_index(directory / PYTORCH_INDEX)
    raise CheckpointError(
        f"{directory}: no weights found (expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {PYTORCH_FILE})"
    )


def index_checkpoint(directory: Path) -> tuple[Path, dict[str, TensorEntry]]:
    """Every tensor of the checkpoint in ``directory``, by key, without reading weight bytes."""
    name, files = checkpoint_files(directory)
    entries: dict[str, TensorEntry] = {}
    for path in files:
        listed = _read_pytorch_entries(path) if path.suffix == ".bin" else _read_safetensors_entries(path)
        for entry in listed:
            if entry.key in entries:
                raise CheckpointError(f"{path}: key {entry.key} also appears in {entries[entry.key].path.name}")
            entries[entry.key] = entry
    return name, entries


def check_keys(name: Path, entries: Mapping[str, TensorEntry], expected: Mapping[str, tuple[list[int], torch.dtype]]) -> None:
    """Raise CheckpointError on the first unexpected, mismatched or missing key."""
    for key, entry in entries.items():
        if key not in expected:
            raise CheckpointError(f"{entry.path}: unexpected key {key} (not part of the SegEarth-R1 architecture)")
        shape, dtype = expected[key]
        if entry.shape != shape:
            raise CheckpointError(
                f"{entry.path}: shape mismatch for {key}: checkpoint has {entry.shape}, model expects {shape}"
            )
        if entry.dtype.is_floating_point != dtype.is_floating_point:
            raise CheckpointError(f"{entry.path}: dtype mismatch for {key}: checkpoint has {entry.dtype}, model expects {dtype}")
    missing = [key for key in expected if key not in entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{name}: missing key {missing[0]}{more}")


def cast_weight(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, official_numerics: bool) -> torch.Tensor:
    """A floating-point checkpoint tensor in the compute ``dtype`` on ``device``.

    ``official_numerics``: rounded through float16 first, as the official loader read the
    bf16 file as float16 before computing in float32.
    """
    if official_numerics:
        tensor = tensor.to(torch.float16)
    return tensor.to(device=device, dtype=dtype)


# Elements rounded through float16 at a time by owned_tensors: a 32 MB buffer reused for
# every tensor, instead of a float16 copy of each whole tensor. For a full-size float32
# load those copies are 3.2 GB of fresh pages, whose page faults cost about 1 s of CPU on
# a 2-core Xeon.
_ROUNDING_CHUNK = 16 * 1024**2


def _rounded_on_host(tensor: torch.Tensor, dtype: torch.dtype, scratch: torch.Tensor) -> torch.Tensor:
    """``tensor.to(float16).to(dtype)`` in host memory, through ``scratch`` (float16) chunk by chunk."""
    result = torch.empty(tensor.shape, dtype=dtype)
    source, target = tensor.reshape(-1), result.view(-1)
    for start in range(0, source.numel(), scratch.numel()):
        stop = min(start + scratch.numel(), source.numel())
        rounded = scratch[: stop - start]
        rounded.copy_(source[start:stop])
        target[start:stop].copy_(rounded)
    return result


def owned_tensors(
    tensors: Iterator[tuple[str, torch.Tensor]], device: torch.device, dtype: torch.dtype, official_numerics: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """Borrowed checkpoint tensors as copies of this process's own, floats already in the compute precision."""
    scratch = None
    for key, tensor in tensors:
        if tensor.is_floating_point() and official_numerics and device.type == "cpu" and tensor.device.type == "cpu":
            if scratch is None:
                scratch = torch.empty(_ROUNDING_CHUNK, dtype=torch.float16)
            owned = _rounded_on_host(tensor, dtype, scratch)
        else:
            owned = cast_weight(tensor, device, dtype, official_numerics) if tensor.is_floating_point() else tensor
        # .to() hands back its input when nothing changes; that memory is the file's.
        if owned.data_ptr() == tensor.data_ptr() and owned.device == tensor.device:
            owned = owned.clone()
        del tensor
        yield key, owned


def _read_safetensors_file(path: Path, listed: list[TensorEntry]) -> Iterator[tuple[str, torch.Tensor]]:
    # The library maps the whole file, and every page a tensor was read from stays in this
    # process's resident memory until that mapping closes: left open, a full-size bf16 file
    # adds its 3.2 GB to the peak (10.0 GB instead of 7.1 for a float32 load). Reopening
    # after every _REMAP_BYTES bounds that to one slice.
    remaining = iter(listed)
    entry = next(remaining, None)
    while entry is not None:
        with safe_open(str(path), framework="pt") as handle:
            read = 0
            while entry is not None and read < _REMAP_BYTES:
                read += math.prod(entry.shape) * entry.dtype.itemsize
                yield entry.key, handle.get_tensor(entry.key)
                entry = next(remaining, None)


def iter_checkpoint_tensors(entries: Mapping[str, TensorEntry]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, file by file in file order.

    Every tensor is a view of its file's memory map: the caller must copy what it keeps
    (the file may change under the map) and drop the rest before asking for the next.
    """
    by_file: dict[Path, list[TensorEntry]] = {}
    for entry in entries.values():
        by_file.setdefault(entry.path, []).append(entry)
    for path, listed in by_file.items():
        if listed[0].mapped is not None:
            for entry in listed:
                yield entry.key, entry.mapped
            continue
        try:
            yield from _read_safetensors_file(path, listed)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({_safetensors_reason(exc)})") from exc
