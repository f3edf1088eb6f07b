"""Names shared across the package and its callers, importable without torch: the built-in
model and the files of a released checkpoint directory."""

from __future__ import annotations

#: The built-in network with seeded random weights (see :mod:`.tiny_random`).
TINY_RANDOM = "tiny-random"
PLACEHOLDER_NOTICE = "tiny-random: random weights, answers are meaningless"

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
