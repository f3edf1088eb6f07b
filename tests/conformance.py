"""The official implementation's conformance data in ../shared/conformance, read in place.

Every skip for want of it names ../shared, so that CI (where the folder always exists)
turns the skip into a failure (see conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"


def conformance_file(name: str) -> Path:
    """``../shared/conformance/<name>``; skips the test when it is absent."""
    path = CONFORMANCE / name
    if not path.exists():
        pytest.skip(f"../shared/conformance/{name} not present")
    return path


def write_fixture_checkpoint(directory: Path) -> Path:
    """The fixture's tiny weights and released config.json as a checkpoint directory ``load_pretrained`` reads.

    The fixture's samples come as token ids, so the tokenizer written beside them only has to load.
    """
    from segearth_model.tiny_random import build_tiny_tokenizer

    weights = conformance_file("tiny_weights.safetensors")
    hf_config = json.loads(conformance_file("tiny_config.json").read_text())["hf_config_json_as_saved"]
    (directory / "config.json").write_text(json.dumps(hf_config))
    (directory / "model.safetensors").write_bytes(weights.read_bytes())
    build_tiny_tokenizer().save_pretrained(str(directory))
    return directory
