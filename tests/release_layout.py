"""Writing a model as the official code saved its checkpoints, for tests that load it back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from segearth_model.checkpoint_config import checkpoint_config_json
from segearth_model.names import CONFIG_FILE, GENERATION_CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX
from segearth_model.state_dict import to_release_state_dict

# What transformers 4.36 wrote next to the released weights.
GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.36.2"}


def save_release_layout(
    model: torch.nn.Module,
    tokenizer,
    directory: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    *,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``model`` with fused QKV under the released key names, floats stored in ``dtype``.

    With ``max_shard_bytes`` the weights are split into ``model-0000i-of-0000n.safetensors``
    files plus ``model.safetensors.index.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    release = {
        key: (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
        for key, tensor in to_release_state_dict(model.state_dict(), model.config).items()
    }
    if max_shard_bytes is None:
        save_file(release, str(directory / SAFETENSORS_FILE), metadata={"format": "pt"})
    else:
        shards: list[list[str]] = [[]]
        used = 0
        for key, tensor in release.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and used + nbytes > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(key)
            used += nbytes
        weight_map = {}
        for number, keys in enumerate(shards, start=1):
            shard_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file({key: release[key] for key in keys}, str(directory / shard_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(keys, shard_name))
        total = sum(tensor.numel() * tensor.element_size() for tensor in release.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (directory / CONFIG_FILE).write_text(json.dumps(checkpoint_config_json(model.config, dtype), indent=2) + "\n")
    (directory / GENERATION_CONFIG_FILE).write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    tokenizer.save_pretrained(str(directory))
    return directory
