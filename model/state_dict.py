"""Released key layout <-> module key layout.

The released checkpoints were saved by transformers 4.36, whose Phi attention keeps one
fused ``query_key_value`` projection laid out per head as ``[q_h0, k_h0, v_h0, q_h1, ...]``.
The network's Phi (:mod:`.language`, named as transformers' ``PhiModel``) has separate ``q_proj``,
``k_proj`` and ``v_proj``; everything else keeps its released name.
"""

from __future__ import annotations

import re
from typing import Iterator, Mapping

import torch

from .config import SegEarthR1Config
from .errors import CheckpointError

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
        if list(tensor.shape) != expected:
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint has {list(tensor.shape)}, model expects {expected}"
            )
        # Per head [q|k|v] interleave (Bloom/Persimmon style), not three stacked blocks.
        per_head = tensor.reshape(heads, 3, head_dim, hidden) if kind == "weight" else tensor.reshape(heads, 3, head_dim)
        for index, name in enumerate(_PROJECTIONS):
            part = per_head[:, index]
            out[f"{prefix}{name}.{kind}"] = (
                part.reshape(hidden, hidden) if kind == "weight" else part.reshape(hidden)
            ).contiguous()
    return out


def release_entries(
    sd: Mapping[str, torch.Tensor],
) -> Iterator[tuple[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Module-layout tensors under their released keys, in release order; a split Phi QKV
    comes as its ``(q, k, v)`` parts under the fused key, once all three were seen."""
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        match = SPLIT_QKV.match(key)
        if match is None:
            yield key, tensor
            continue
        prefix, name, kind = match.groups()
        group = pending.setdefault((prefix, kind), {})
        group[name] = tensor
        if len(group) == 3:
            del pending[(prefix, kind)]
            yield f"{prefix}query_key_value.{kind}", tuple(group[n] for n in _PROJECTIONS)
    if pending:
        (prefix, kind), group = next(iter(pending.items()))
        missing = next(n for n in _PROJECTIONS if n not in group)
        raise CheckpointError(f"state dict: missing {prefix}{missing}.{kind} to fuse {prefix}query_key_value.{kind}")


def to_release_state_dict(sd: Mapping[str, torch.Tensor], config: SegEarthR1Config) -> dict[str, torch.Tensor]:
    """Module layout -> released layout: the inverse of :func:`convert_checkpoint_state_dict`."""
    lang = config.language
    heads, head_dim, hidden = lang.num_attention_heads, lang.head_dim, lang.hidden_size
    out: dict[str, torch.Tensor] = {}
    for key, value in release_entries(sd):
        if isinstance(value, tuple):
            if key.endswith(".weight"):
                value = torch.stack([p.reshape(heads, head_dim, hidden) for p in value], dim=1).reshape(3 * hidden, hidden)
            else:
                value = torch.stack([p.reshape(heads, head_dim) for p in value], dim=1).reshape(3 * hidden)
        out[key] = value
    return out
