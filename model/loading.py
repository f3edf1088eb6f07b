"""``load_pretrained``: a model name, folder or hub id -> (model, tokenizer), ready to run."""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Iterable, Iterator

import torch

from .build import build_empty_model, materialize, release_layout_shapes
from .checkpoint_config import read_checkpoint_config
from .device import resolve_device, resolve_dtype, resolve_precision
from .errors import CheckpointError
from .hub import resolve_checkpoint_dir
from .mixed_precision import apply_mixed_precision
from .names import CONFIG_FILE, TINY_RANDOM
from .precision import MIXED, OFFICIAL
from .prompt import PromptError, special_token_ids
from .prompt_cache import weights_fingerprint
from .tokenizer import load_tokenizer
from .weights import check_keys, index_checkpoint, iter_checkpoint_tensors, owned_tensors

_END = object()


class _ReadAhead:
    """Runs an iterator in a thread of its own and hands its items over in order.

    Reading and casting the weights is torch's work, done with the GIL released, while
    loading the tokenizer and building the network hold it: run side by side on two
    cores they overlap instead of adding up.
    """

    def __init__(self, items: Iterable):
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name="segearth-weights", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterable) -> None:
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._items.put(item)
        except BaseException as exc:  # handed to the consumer, raised in its thread
            self._items.put(exc)
            return
        self._items.put(_END)

    def __iter__(self) -> Iterator:
        while (item := self._items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    official_numerics: bool | None = None,
):
    """(model, tokenizer) for ``"tiny-random"``, a local checkpoint directory or a hub repo id.

    ``dtype``: ``"auto"``, a torch dtype, or a spelling of :mod:`.precision`, ``"mixed"``
    included. ``official_numerics`` reproduces the official loader bit for bit: weights
    rounded through float16 and rotary tables built in float16. By default it is on exactly
    when the model computes in float32, as the paper's evaluation did; False keeps float32
    weights as stored.
    """
    resolved_device = resolve_device(device)
    precision = resolve_precision(dtype, resolved_device, official_numerics=bool(official_numerics))
    if official_numerics is None:
        official_numerics = precision == OFFICIAL
    resolved_dtype = resolve_dtype(precision, resolved_device)
    if str(name_or_path) == TINY_RANDOM:
        from .tiny_random import build_tiny_random

        model, tokenizer = build_tiny_random(device=resolved_device, dtype=resolved_dtype,
                                             official_numerics=official_numerics)
    else:
        model, tokenizer = _load_checkpoint(name_or_path, revision, resolved_device, resolved_dtype, official_numerics)
    if precision == MIXED:
        apply_mixed_precision(model)
    return model, tokenizer


def _load_checkpoint(name_or_path, revision, device: torch.device, dtype: torch.dtype, official_numerics: bool):
    directory = resolve_checkpoint_dir(name_or_path, revision)
    config = read_checkpoint_config(directory)
    name, entries = index_checkpoint(directory)
    weights = _ReadAhead(owned_tensors(iter_checkpoint_tensors(entries), device, dtype, official_numerics))
    try:
        model, tokenizer = _build_and_fill(directory, config, name, entries, weights, device, dtype)
    finally:
        weights.close()
    model.official_numerics = official_numerics
    model.name_or_path = str(name_or_path)
    model.weights_fingerprint = weights_fingerprint([directory / CONFIG_FILE, *sorted({e.path for e in entries.values()})])
    return model, tokenizer


def _build_and_fill(directory, config, name, entries, weights: _ReadAhead, device: torch.device, dtype: torch.dtype):
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
    check_keys(name, entries, release_layout_shapes(model))
    # The read-ahead already rounded (official numerics) and cast every weight into memory
    # of our own; materialize only adopts them.
    model = materialize(model, config, iter(weights), device=device, dtype=dtype, source=str(name))
    return model, tokenizer
