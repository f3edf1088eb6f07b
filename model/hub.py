"""Checkpoints on the Hugging Face hub and in its local cache, without importing torch.

``segearth models`` and ``segearth doctor`` use this module alone, so listing or pulling
models stays fast; ``huggingface_hub`` itself is imported only when it is needed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CheckpointError, ModelNotAvailableError
from .names import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    PYTORCH_FILE,
    PYTORCH_INDEX,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    TINY_RANDOM,
)

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
    revision = _cached_commit(repo_id, revision)

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


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The full commit a unique prefix (7 to 39 hex digits, as git abbreviates) names in the
    cache, or ``revision`` as it is: the hub itself takes only full commits, refs and tags."""
    if revision is None or not re.fullmatch(r"[0-9a-f]{7,39}", revision):
        return revision
    snapshots = hub_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    try:
        found = [entry.name for entry in snapshots.iterdir() if entry.name.startswith(revision)]
    except OSError:
        return revision
    return found[0] if len(found) == 1 else revision


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory for a path or a hub repo id."""
    if not str(name_or_path).strip():  # Path("") is the current folder
        raise ModelNotAvailableError("an empty model name names no checkpoint; give a folder, owner/name or "
                                     f"{TINY_RANDOM}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{path}: not a directory (a checkpoint is a directory holding config.json and weights)")
    if REPO_ID.match(text) and not text.startswith((".", "~")):
        return download_checkpoint(text, revision)
    raise ModelNotAvailableError(
        f"{text}: no such checkpoint directory, and not a Hugging Face repo id (owner/name) nor {TINY_RANDOM}"
    )
