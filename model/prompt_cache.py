"""The shared prompt head's keys and values, kept on disk between runs.

The text before the image is the same for every window, scene and run of a model, so its
keys and values depend only on the weights, the precision, the numerics, the device kind
and the code that computes them. Computing them costs a forward pass of the language model
on every start; a one-scene command pays that on top of its single window. This cache keeps
them in one small safetensors file per key, written atomically. A file that cannot be read,
or whose recorded key differs from the one asked for, counts as a miss: the head is
computed again and the file rewritten, so a corrupt or stale cache can cost time but never
change an answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

if TYPE_CHECKING:
    from .language import PrefixState

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder; empty or ``off`` disables the cache.
CACHE_DIR_ENV = "SEGEARTH_CACHE_DIR"
FORMAT = "segearth-prompt-head-1"
# The code whose arithmetic produces the head: an edit to any of them invalidates the cache.
_SOURCES = ("language.py", "segearth_r1.py", "prompt.py", "prompt_cache.py")


def default_cache_dir() -> Path | None:
    """``$SEGEARTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/segearth``, else ``~/.cache/segearth``; None when disabled."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off") else Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "segearth"


def source_fingerprint(names: tuple[str, ...] | None = None) -> str:
    """A digest of this package's source files ``names`` (default: all of them)."""
    here = Path(__file__).resolve().parent
    paths = sorted(here.glob("*.py")) if names is None else [here / name for name in names]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def weights_fingerprint(files: list[Path]) -> str:
    """Names, sizes and modification times of the files the weights and config come from."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "files:" + digest.hexdigest()[:24]


class PromptHeadCache:
    """Prompt heads of one model (``weights``: its fingerprint) in ``directory``."""

    def __init__(self, directory: Path, weights: str):
        self.directory = Path(directory)
        self.weights = weights

    def describe(self, head_ids: tuple[int, ...], device: torch.device, dtype: torch.dtype, official_numerics: bool) -> dict[str, str]:
        """Everything the head's values depend on; the file records it and is trusted only if it matches."""
        return {
            "format": FORMAT,
            "weights": self.weights,
            "head_ids": hashlib.sha256(",".join(map(str, head_ids)).encode()).hexdigest()[:16],
            "device": torch.device(device).type,
            "dtype": str(dtype).replace("torch.", ""),
            "numerics": "official" if official_numerics else "native",
            "code": source_fingerprint(_SOURCES),
            "torch": torch.__version__,
        }

    def path_for(self, key: dict[str, str]) -> Path:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.directory / "prompt-heads" / f"{name}.safetensors"

    def load(self, key: dict[str, str], device: torch.device) -> "PrefixState | None":
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                if (handle.metadata() or {}) != key:
                    log.debug("prompt head cache %s: recorded key differs, recomputing", path)
                    return None
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            layers = _layer_count(tensors)
            keys = tuple(tensors[f"keys.{i}"] for i in range(layers))
            values = tuple(tensors[f"values.{i}"] for i in range(layers))
        except Exception as exc:  # any unreadable file is a miss, never an error
            log.debug("prompt head cache %s unreadable (%s), recomputing", path, exc)
            return None
        from .language import PrefixState  # the network: imported only when a model runs

        return PrefixState(keys=keys, values=values)

    def store(self, key: dict[str, str], head: "PrefixState") -> None:
        path = self.path_for(key)
        tensors = {f"keys.{i}": k.contiguous() for i, k in enumerate(head.keys)}
        tensors.update({f"values.{i}": v.contiguous() for i, v in enumerate(head.values)})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            os.close(handle)
            try:
                save_file(tensors, temporary, metadata=key)
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A read-only or full disk only costs the next run the head's computation.
            log.debug("prompt head cache %s not written (%s)", path, exc)


def _layer_count(tensors: dict[str, torch.Tensor]) -> int:
    """Layers in a stored head; refuses a file whose keys and values do not pair up."""
    layers = sum(1 for name in tensors if name.startswith("keys."))
    expected = {f"{kind}.{i}" for kind in ("keys", "values") for i in range(layers)}
    if layers == 0 or set(tensors) != expected:
        raise ValueError("keys and values do not pair up")
    return layers
