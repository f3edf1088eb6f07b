"""Reading and writing SegEarth-R1 checkpoints in the released key layout.

The released checkpoints were saved by transformers 4.36, whose Phi attention keeps one
fused ``query_key_value`` projection laid out per head as ``[q_h0, k_h0, v_h0, q_h1, ...]``.
Current transformers' ``PhiModel`` (which the network uses) has separate ``q_proj``,
``k_proj`` and ``v_proj``; everything else keeps its released name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .config import SegEarthR1Config
from .prompt import PromptError, special_token_ids
from .tiny_random import TINY_RANDOM

FUSED_QKV = re.compile(r"^(model\.layers\.\d+\.self_attn\.)query_key_value\.(weight|bias)$")
SPLIT_QKV = re.compile(r"^(model\.layers\.\d+\.self_attn\.)(q_proj|k_proj|v_proj)\.(weight|bias)$")
_PROJECTIONS = ("q_proj", "k_proj", "v_proj")

# Released tensors that the mask path never reads. They stay real modules of the network,
# so a strict load consumes them by name instead of dropping them silently: the language
# head and learned queries of training, and the decoder's unused query tables.
UNUSED_AT_INFERENCE = re.compile(
    r"^(lm_head\.weight|seg_query"
    r"|predictor\.(query_feat|query_embed|SEG_query_embed|new_query_embed)\.weight"
    r"|predictor\.(SEG_proj|CLASS_proj)\.layers\.\d+\.(weight|bias))$"
)


class ModelLoadError(Exception):
    """Loading failed for a reason one line can tell the user."""

    # Same meaning as the command line's "model unavailable" exit status.
    exit_code = 4

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointError(ModelLoadError):
    """A checkpoint file is missing, corrupt or does not fit the architecture."""


class ModelNotAvailableError(ModelLoadError):
    """The model is neither on disk nor downloadable right now."""


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def _nbytes(shape: list[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def convert_checkpoint_state_dict(
    sd: Mapping[str, torch.Tensor], config: SegEarthR1Config, *, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Released layout -> module layout: split each fused Phi QKV per head; keep every other key.

    ``source`` names the file in error messages.
    """
    lang = config.language
    heads, head_dim, hidden = lang.num_attention_heads, lang.head_dim, lang.hidden_size
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        match = FUSED_QKV.match(key)
        if match is None:
            out[key] = tensor
            continue
        prefix, kind = match.groups()
        expected = [3 * hidden, hidden] if kind == "weight" else [3 * hidden]
        if _shape(tensor) != expected:
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint has {_shape(tensor)}, model expects {expected}"
            )
        # Per head [q|k|v] interleave (Bloom/Persimmon style), not three stacked blocks.
        per_head = tensor.reshape(heads, 3, head_dim, hidden) if kind == "weight" else tensor.reshape(heads, 3, head_dim)
        for index, name in enumerate(_PROJECTIONS):
            part = per_head[:, index]
            out[f"{prefix}{name}.{kind}"] = (
                part.reshape(hidden, hidden) if kind == "weight" else part.reshape(hidden)
            ).contiguous()
    return out


def to_release_state_dict(sd: Mapping[str, torch.Tensor], config: SegEarthR1Config) -> dict[str, torch.Tensor]:
    """Module layout -> released layout: the inverse of :func:`convert_checkpoint_state_dict`."""
    lang = config.language
    heads, head_dim, hidden = lang.num_attention_heads, lang.head_dim, lang.hidden_size
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        match = SPLIT_QKV.match(key)
        if match is None:
            out[key] = tensor
            continue
        prefix, name, kind = match.groups()
        group = pending.setdefault((prefix, kind), {})
        group[name] = tensor
        if len(group) < 3:
            continue
        parts = [group[n] for n in _PROJECTIONS]
        if kind == "weight":
            fused = torch.stack([p.reshape(heads, head_dim, hidden) for p in parts], dim=1).reshape(3 * hidden, hidden)
        else:
            fused = torch.stack([p.reshape(heads, head_dim) for p in parts], dim=1).reshape(3 * hidden)
        out[f"{prefix}query_key_value.{kind}"] = fused
        del pending[(prefix, kind)]
    if pending:
        (prefix, kind), group = next(iter(pending.items()))
        missing = next(n for n in _PROJECTIONS if n not in group)
        raise CheckpointError(f"state dict: missing {prefix}{missing}.{kind} to fuse {prefix}query_key_value.{kind}")
    return out


# ----------------------------------------------------------------------------------------
# Device and precision
# ----------------------------------------------------------------------------------------

_DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is taken as a torch device name."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but this torch build sees no CUDA device")
    if resolved.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return resolved


def _supports_bfloat16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
        return True
    return False


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None, *, official_numerics: bool = False) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that has it, float32 otherwise (and always float32 for official numerics)."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point type")
        return dtype
    if dtype == "auto":
        if official_numerics:
            # The official evaluation computes in float32.
            return torch.float32
        return torch.bfloat16 if device is not None and _supports_bfloat16(device) else torch.float32
    try:
        return _DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


# ----------------------------------------------------------------------------------------
# Building the module tree without allocating its weights
# ----------------------------------------------------------------------------------------


@contextmanager
def parameters_on_meta():
    """Create every parameter on the meta device while a model is built; buffers stay real.

    Buffers the checkpoint does not carry (rotary frequencies, Swin's relative-position
    indices before loading) are computed in ``__init__`` and must keep their values, which a
    plain ``torch.device("meta")`` context would throw away.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_empty_model(config: SegEarthR1Config) -> nn.Module:
    """A ``SegEarthR1`` whose parameters live on the meta device (no weight memory)."""
    from .segearth_r1 import SegEarthR1

    with parameters_on_meta():
        return SegEarthR1(config)


def release_layout_shapes(model: nn.Module, config: SegEarthR1Config) -> dict[str, tuple[list[int], torch.dtype]]:
    """Every key a released checkpoint of this architecture holds, with its shape and module dtype.

    ``model`` comes from :func:`build_empty_model`, so fusing its meta QKV parameters costs nothing.
    """
    release = to_release_state_dict(model.state_dict(), config)
    return {key: (_shape(tensor), tensor.dtype) for key, tensor in release.items()}


# ----------------------------------------------------------------------------------------
# Reading weight files
# ----------------------------------------------------------------------------------------

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
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# Our own record of the full architecture; the official code ignores unknown config fields.
ARCHITECTURE_FIELD = "segearth_architecture"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor of a checkpoint lives, known before any of its bytes are read."""

    key: str
    path: Path
    shape: list[int]
    dtype: torch.dtype
    # safetensors: absolute byte range in the file; .bin: the already-mapped tensor.
    begin: int = 0
    end: int = 0
    tensor: torch.Tensor | None = None


def _read_safetensors_header(path: Path) -> list[TensorEntry]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated: too short to be a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise CheckpointError(
                    f"{path}: truncated or corrupt: header claims {header_len} bytes but the file has {size}"
                )
            header = json.loads(handle.read(header_len))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a table)")
    data_start = 8 + header_len
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt header entry for {key}") from exc
        expected_bytes = _nbytes(shape, dtype)
        if end - begin != expected_bytes or begin < 0:
            raise CheckpointError(
                f"{path}: corrupt header entry for {key}: {end - begin} bytes for shape {shape} {info['dtype']}"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {key} ends at byte {data_start + end} but the file has {size} bytes"
            )
        entries.append(TensorEntry(key, path, shape, dtype, data_start + begin, data_start + end))
    return entries


def _read_safetensors_tensor(handle, entry: TensorEntry, staging: torch.Tensor) -> torch.Tensor:
    buffer = staging[: entry.end - entry.begin]
    handle.seek(entry.begin)
    if buffer.numel() and handle.readinto(memoryview(buffer.numpy())) != buffer.numel():
        raise CheckpointError(f"{entry.path}: truncated while reading {entry.key}")
    return buffer.view(entry.dtype).reshape(entry.shape)


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
    return [TensorEntry(key, path, _shape(value), value.dtype, tensor=value) for key, value in state.items()]


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
        listed = _read_pytorch_entries(path) if path.suffix == ".bin" else _read_safetensors_header(path)
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


def iter_checkpoint_tensors(entries: Mapping[str, TensorEntry]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, in file order.

    A safetensors tensor is read into one staging buffer that the next item overwrites:
    the caller must copy what it keeps before asking for the next. Reusing the buffer
    keeps the allocator from holding on to a heap of freed raw tensors, which would add
    up to a gigabyte to the peak memory of a full-size load.
    """
    by_file: dict[Path, list[TensorEntry]] = {}
    for entry in entries.values():
        by_file.setdefault(entry.path, []).append(entry)
    for path, listed in by_file.items():
        if listed[0].tensor is not None:
            for entry in listed:
                yield entry.key, entry.tensor
            continue
        staging = torch.empty(max(e.end - e.begin for e in listed), dtype=torch.uint8)
        try:
            with open(path, "rb") as handle:
                for entry in sorted(listed, key=lambda e: e.begin):
                    yield entry.key, _read_safetensors_tensor(handle, entry, staging)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
        del staging


# ----------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------


def _dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(cls(), f.name) if f.init else None
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = _dataclass_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def architecture_record(config: SegEarthR1Config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_checkpoint_json(hf_config: Mapping[str, Any], source: str = CONFIG_FILE) -> SegEarthR1Config:
    """The architecture a ``config.json`` describes.

    Released files only carry the language-model and projector fields; the rest are the
    released defaults. Files written by :func:`save_release_layout` also record the whole
    architecture, and the conformance fixture's ``tiny_*`` fields mark the tiny preset.
    """
    try:
        if ARCHITECTURE_FIELD in hf_config:
            base = _dataclass_from_dict(SegEarthR1Config, hf_config[ARCHITECTURE_FIELD])
        elif "tiny_swin_embed_dim" in hf_config:
            base = SegEarthR1Config.tiny()
        else:
            base = SegEarthR1Config()
        return SegEarthR1Config.from_checkpoint_config(hf_config, base=base)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: not a SegEarth-R1 configuration ({exc})") from exc


def read_checkpoint_config(directory: Path) -> SegEarthR1Config:
    path = directory / CONFIG_FILE
    try:
        hf_config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON") from exc
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{path}: not a configuration table")
    return config_from_checkpoint_json(hf_config, str(path))


def checkpoint_config_json(config: SegEarthR1Config, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """config.json for a release of ``config``: the released fields plus what they cannot express."""
    hf_config = config.to_checkpoint_config()
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    released = SegEarthR1Config()
    if config.projector.in_channels != released.projector.in_channels:
        hf_config["mm_input_embeds"] = config.projector.in_channels
    if config != released:
        hf_config[ARCHITECTURE_FIELD] = architecture_record(config)
    return hf_config


# ----------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SMALL_FILES = [
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
]
SAFETENSORS_PATTERNS = [SAFETENSORS_FILE, SAFETENSORS_INDEX, "model-*-of-*.safetensors"]
PYTORCH_PATTERNS = [PYTORCH_FILE, PYTORCH_INDEX, "pytorch_model-*-of-*.bin"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub itself reads it once, at import)."""
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """The standard hub cache, honouring HF_HUB_CACHE / HF_HOME as they are set now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _how_to_get(repo_id: str) -> str:
    return f"run `segearth models pull {repo_id}` while online, or pass a local checkpoint directory"


def download_checkpoint(repo_id: str, revision: str | None = None, *, local_files_only: bool | None = None) -> Path:
    """The snapshot directory of ``repo_id`` in the hub cache, downloading what is missing.

    Only the configuration, tokenizer and weight files are fetched; safetensors weights are
    preferred and ``pytorch_model.bin`` is fetched only when a repository has none.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = hub_offline() if local_files_only is None else local_files_only

    def fetch(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=hub_cache_dir(),
                allow_patterns=patterns,
                local_files_only=offline,
            )
        )

    try:
        snapshot = fetch(SMALL_FILES + SAFETENSORS_PATTERNS)
        if not any((snapshot / n).is_file() for n in (SAFETENSORS_FILE, SAFETENSORS_INDEX)):
            snapshot = fetch(SMALL_FILES + PYTORCH_PATTERNS)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        what = f"revision {revision} of " if isinstance(exc, RevisionNotFoundError) and revision else ""
        raise ModelNotAvailableError(f"{what}{repo_id}: not found on the Hugging Face hub (or access is denied)") from exc
    except LocalEntryNotFoundError as exc:
        reason = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline else "cannot be reached and not in the local cache"
        raise ModelNotAvailableError(f"{repo_id}: {reason} ({hub_cache_dir()}); {_how_to_get(repo_id)}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotAvailableError(f"{repo_id}: download failed ({first[:200]}); {_how_to_get(repo_id)}") from exc
    return snapshot


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory for a path or a hub repo id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{path}: not a directory (a checkpoint is a directory holding config.json and weights)")
    if REPO_ID.match(text) and not text.startswith((".", "~")):
        return download_checkpoint(text, revision)
    raise ModelNotAvailableError(
        f"{text}: no such checkpoint directory, and not a Hugging Face repo id (owner/name) nor tiny-random"
    )


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # AutoTokenizer also parses config.json, whose released fields (model_type llava_phi,
    # rope_scaling) transformers warns about; none of that concerns the tokenizer.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: tokenizer files cannot be loaded ({first[:200]})") from exc
    finally:
        transformers_logging.set_verbosity(verbosity)


def _prepare(
    tensor: torch.Tensor, module_dtype: torch.dtype, device: torch.device, dtype: torch.dtype, official_numerics: bool, borrowed: bool
) -> torch.Tensor:
    """``tensor`` in the module's precision on ``device``; a copy whenever ``tensor`` is borrowed."""
    if not tensor.is_floating_point():
        out = tensor.to(device=device, dtype=module_dtype)
    else:
        if official_numerics:
            # The official loader read the bf16 file as float16 before computing in float32.
            tensor = tensor.to(torch.float16)
        out = tensor.to(device=device, dtype=dtype)
    # .to() hands back its input when nothing changes; a borrowed input is a reused buffer.
    if borrowed and out.data_ptr() == tensor.data_ptr() and out.device == tensor.device:
        return out.clone()
    return out


def materialize(
    model: nn.Module,
    config: SegEarthR1Config,
    tensors: Iterator[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    official_numerics: bool = False,
    source: str = "checkpoint",
    borrowed: bool = False,
) -> nn.Module:
    """Fill a model built by :func:`build_empty_model` from released-layout tensors, strictly.

    Tensors are converted, cast and moved one at a time, so peak memory stays near one
    copy of the model in its target precision. Tensors already in the target precision
    and place become the model's own unless ``borrowed`` says their memory is reused
    after each item (as :func:`iter_checkpoint_tensors` does); then they are copied.
    Module-layout keys (``q_proj``...) are accepted as they are.
    """
    module_dtypes = {key: t.dtype for key, t in model.state_dict().items()}
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    state: dict[str, torch.Tensor] = {}
    for key, tensor in items:
        # Cast first, then split the fused QKV: the pieces are the only lasting copies.
        module_key = key if key in module_dtypes else FUSED_QKV.sub(r"\1q_proj.\2", key)
        if module_key not in module_dtypes:
            raise CheckpointError(f"{source}: unexpected key {key} (not part of the SegEarth-R1 architecture)")
        prepared = _prepare(tensor, module_dtypes[module_key], device, dtype, official_numerics, borrowed)
        del tensor
        state.update(convert_checkpoint_state_dict({key: prepared}, config, source=source))
        del prepared
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{source}: {' '.join(line.strip() for line in first[:3])[:300]}") from exc
    del state
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise CheckpointError(f"{source}: no value for {left_on_meta[0]}")
    model.to(device)
    model.requires_grad_(False)
    model.eval()
    model.official_numerics = official_numerics
    return model


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    official_numerics: bool = False,
):
    """(model, tokenizer) for ``"tiny-random"``, a local checkpoint directory or a hub repo id.

    ``official_numerics`` reproduces the official loader bit for bit: weights rounded
    through float16 and rotary tables built in float16 (use it with float32).
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device, official_numerics=official_numerics)
    if str(name_or_path) == TINY_RANDOM:
        from .tiny_random import build_tiny_random

        return build_tiny_random(device=resolved_device, dtype=resolved_dtype, official_numerics=official_numerics)

    directory = resolve_checkpoint_dir(name_or_path, revision)
    config = read_checkpoint_config(directory)
    name, entries = index_checkpoint(directory)
    tokenizer = load_tokenizer(directory)
    try:
        special = special_token_ids(tokenizer)
    except PromptError as exc:
        raise CheckpointError(f"{directory}: {exc}") from None
    if len(tokenizer) > config.language.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {config.language.vocab_size}"
        )
    config = dataclasses.replace(config, pad_token_id=special.pad, seg_token_id=special.seg)

    try:
        model = build_empty_model(config)
    except ValueError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: inconsistent architecture ({exc})") from exc
    check_keys(name, entries, release_layout_shapes(model, config))
    model = materialize(
        model,
        config,
        iter_checkpoint_tensors(entries),
        device=resolved_device,
        dtype=resolved_dtype,
        official_numerics=official_numerics,
        source=str(name),
        borrowed=True,
    )
    model.name_or_path = str(name_or_path)
    return model, tokenizer


# ----------------------------------------------------------------------------------------
# Writing the released layout
# ----------------------------------------------------------------------------------------


def write_safetensors(
    path: Path,
    specs: list[tuple[str, torch.dtype, list[int]]],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor: only one tensor is ever held in memory.

    ``specs`` fixes the header up front; ``produce(key)`` must return a tensor of that
    dtype and shape.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for key, dtype, shape in specs:
        nbytes = _nbytes(shape, dtype)
        header[key] = {"dtype": _SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keeps tensor data 8-byte aligned, as the reference writer does
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for key, dtype, shape in specs:
            tensor = produce(key)
            if tensor.dtype != dtype or _shape(tensor) != list(shape):
                raise ValueError(f"{key}: produced {tensor.dtype} {_shape(tensor)}, header says {dtype} {list(shape)}")
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            handle.write(memoryview(raw.numpy()))


def write_generation_config(directory: Path) -> None:
    # What transformers 4.36 wrote next to the released weights.
    generation = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.36.2"}
    (directory / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")


def save_release_layout(
    model: nn.Module,
    tokenizer,
    directory: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    *,
    config: SegEarthR1Config | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``model`` as the official code saved its checkpoints (fused QKV, released key names).

    With ``max_shard_bytes`` the weights are split into ``model-0000i-of-0000n.safetensors``
    files plus ``model.safetensors.index.json``.
    """
    config = config or model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    release = to_release_state_dict(model.state_dict(), config)

    def produce(key: str) -> torch.Tensor:
        tensor = release[key]
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    specs = [(key, dtype if t.is_floating_point() else t.dtype, _shape(t)) for key, t in release.items()]
    if max_shard_bytes is None:
        write_safetensors(directory / SAFETENSORS_FILE, specs, produce)
    else:
        shards: list[list[tuple[str, torch.dtype, list[int]]]] = [[]]
        used = 0
        for spec in specs:
            nbytes = _nbytes(spec[2], spec[1])
            if shards[-1] and used + nbytes > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(spec)
            used += nbytes
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            shard_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(directory / shard_name, shard, produce)
            weight_map.update({key: shard_name for key, _, _ in shard})
        total = sum(_nbytes(shape, dtype) for _, dtype, shape in specs)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (directory / CONFIG_FILE).write_text(json.dumps(checkpoint_config_json(config, dtype), indent=2) + "\n")
    write_generation_config(directory)
    tokenizer.save_pretrained(str(directory))
    return directory
