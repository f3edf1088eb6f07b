"""``load_pretrained``: a model name, folder or hub id -> (model, tokenizer), ready to run."""

from __future__ import annotations

import dataclasses
import os

import torch

from .build import build_empty_model, materialize, release_layout_shapes
from .checkpoint_config import read_checkpoint_config
from .device import resolve_device, resolve_dtype
from .errors import CheckpointError
from .hub import resolve_checkpoint_dir
from .names import CONFIG_FILE, TINY_RANDOM
from .prompt import PromptError, special_token_ids
from .tokenizer import load_tokenizer
from .weights import check_keys, index_checkpoint, iter_checkpoint_tensors


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
