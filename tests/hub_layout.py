"""A model repo laid out exactly as huggingface_hub caches it, for the cache tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = "segearth-test/tiny-release"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "config.json": b'{"model_type": "llava_phi"}\n',
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer_config.json": b"{}\n",
}


def cache_repo(home: Path, repo: str = REPO, commit: str = COMMIT, files: dict[str, bytes] = FILES) -> Path:
    """Lay out a repo exactly as huggingface_hub caches it: refs, blobs named by hash, snapshot symlinks."""
    folder = home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot
