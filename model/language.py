"""The Phi-1.5 language model, holding the vision tower and projector, with prefix caching.

Module names are those of transformers' ``PhiModel`` (``layers.N.self_attn.q_proj``...), so
the released weights load by name (:mod:`.state_dict` splits their fused QKV). The
arithmetic is the eager path transformers runs for Phi, operation for operation: its
outputs are bit-identical (tests/test_language.py), and so they match the released code as
before. The network is written out here rather than imported because importing
transformers' modelling stack takes 1.4 s of CPU, about a tenth of the time a one-window
query needs from start to answer.

Two things are added on top of the stock model:

* ``vision_tower`` and ``mm_projector`` live inside it, because the released checkpoint
  stores them under ``model.`` (the LLaVA layout).
* Prefix caching. A prompt is ``head ‖ image tokens ‖ tail ‖ question ‖ [SEG]``; the head is
  the same for every window and ``head ‖ image ‖ tail`` is the same for every question on a
  window. Their keys and values are computed once and kept as a :class:`PrefixState`; each
  question then only runs its own tokens, with position ids continuing after the prefix.

The official loader built the rotary cos/sin tables in float16 (it constructs the model
under a float16 default dtype) and upcast them afterwards. ``official_numerics`` reproduces
that rounding so the hidden states match the released code to float32 precision;
without it the tables are exact float32, which moves hidden states by ~5e-4 and final
mask logits by ~5e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .config import LanguageConfig


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # Spelt as Phi's released code spells it ("gelu_new"); torch's fused tanh GELU rounds differently.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu_new": _gelu_tanh, "gelu": F.gelu}


class RotaryEmbedding(nn.Module):
    """cos/sin tables of the rotary position embedding, over the first ``rotary_dims`` of a head."""

    def __init__(self, language: LanguageConfig):
        super().__init__()
        dims = int(language.head_dim * language.partial_rotary_factor)
        inv_freq = 1.0 / (language.rope_theta ** (torch.arange(0, dims, 2, dtype=torch.float) / dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.round_through_float16 = False

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, L, rotary_dims), in ``x``'s dtype."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.round_through_float16:
            # The official float16 buffers: rounded first, converted to the compute dtype after.
            cos, sin = cos.half(), sin.half()
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dims: int) -> torch.Tensor:
    """Rotate the first ``rotary_dims`` features of every head of ``x`` (B, heads, L, head_dim)."""
    rotated, passed = x[..., :rotary_dims], x[..., rotary_dims:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotated = (rotated * cos) + (_rotate_half(rotated) * sin)
    return torch.cat((rotated, passed), dim=-1)


def causal_mask(prefix_length: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Additive mask (1, 1, L, prefix + L) that hides later positions; None for one token.

    Hidden scores get the dtype's lowest finite value added, as in transformers' eager
    attention, and so come out of the softmax as exactly 0.
    """
    if length == 1:
        return None
    hidden = torch.full((length, prefix_length + length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return hidden.triu(prefix_length + 1)[None, None]


class PhiAttention(nn.Module):
    """Eager attention with a float32 softmax, as the released model ran it: fused kernels
    (SDPA) reorder the reductions and would cost parity."""

    def __init__(self, language: LanguageConfig):
        super().__init__()
        self.head_dim = language.head_dim
        self.rotary_dims = int(language.head_dim * language.partial_rotary_factor)
        self.scaling = language.head_dim**-0.5
        width = language.num_attention_heads * language.head_dim
        self.q_proj = nn.Linear(language.hidden_size, width)
        self.k_proj = nn.Linear(language.hidden_size, width)
        self.v_proj = nn.Linear(language.hidden_size, width)
        self.dense = nn.Linear(width, language.hidden_size)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output (B, L, hidden), keys and values of past and these tokens (B, heads, past + L, head_dim))."""
        batch, length = hidden.shape[:2]
        heads = (batch, length, -1, self.head_dim)
        query = self.q_proj(hidden).view(heads).transpose(1, 2)
        key = self.k_proj(hidden).view(heads).transpose(1, 2)
        value = self.v_proj(hidden).view(heads).transpose(1, 2)
        query = _apply_rotary(query, cos, sin, self.rotary_dims)
        key = _apply_rotary(key, cos, sin, self.rotary_dims)
        if past is not None:
            key = torch.cat([past[0], key], dim=-2)
            value = torch.cat([past[1], value], dim=-2)
        scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling
        if mask is not None:
            scores = scores + mask
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        attended = torch.matmul(weights, value).transpose(1, 2).contiguous()
        return self.dense(attended.reshape(batch, length, -1).contiguous()), key, value


class PhiMLP(nn.Module):
    def __init__(self, language: LanguageConfig):
        super().__init__()
        if language.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {language.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[language.hidden_act]
        self.fc1 = nn.Linear(language.hidden_size, language.intermediate_size)
        self.fc2 = nn.Linear(language.intermediate_size, language.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden)))


class PhiDecoderLayer(nn.Module):
    """Attention and MLP side by side on the same normed input (Phi's parallel block)."""

    def __init__(self, language: LanguageConfig):
        super().__init__()
        self.self_attn = PhiAttention(language)
        self.mlp = PhiMLP(language)
        self.input_layernorm = nn.LayerNorm(language.hidden_size, eps=language.layer_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed = self.input_layernorm(hidden)
        attended, key, value = self.self_attn(normed, cos, sin, mask, past)
        return attended + self.mlp(normed) + hidden, key, value


@dataclass(frozen=True)
class PrefixState:
    """Keys and values of an already-run prompt prefix, one pair per layer.

    Each tensor is ``(batch, heads, length, head_dim)``. The state is never mutated: every
    continuation builds its own keys and values from it.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2])

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])

    def truncated(self, length: int) -> "PrefixState":
        """The first ``length`` positions."""
        return PrefixState(
            keys=tuple(k[:, :, :length] for k in self.keys), values=tuple(v[:, :, :length] for v in self.values)
        )

    def select(self, rows: torch.Tensor | None, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (keys, values) whose row ``i`` is prefix row ``rows[i]``.

        ``rows=None`` broadcasts a single-row prefix to ``batch_size`` rows.
        """
        if rows is None and self.batch_size not in (1, batch_size):
            raise ValueError(f"prefix has {self.batch_size} rows, cannot serve a batch of {batch_size}")

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.expand(batch_size, -1, -1, -1) if rows is None else t.index_select(0, rows)

        return [(pick(k), pick(v)) for k, v in zip(self.keys, self.values)]


class SegEarthPhiModel(nn.Module):
    """Phi-1.5 (token embeddings, decoder layers, final norm) with the vision tower and projector."""

    def __init__(self, language: LanguageConfig, vision_tower: nn.Module, mm_projector: nn.Module):
        super().__init__()
        self.embed_tokens = nn.Embedding(language.vocab_size, language.hidden_size)
        self.layers = nn.ModuleList(PhiDecoderLayer(language) for _ in range(language.num_hidden_layers))
        self.rotary_emb = RotaryEmbedding(language)
        self.final_layernorm = nn.LayerNorm(language.hidden_size, eps=language.layer_norm_eps)
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector

    @property
    def official_numerics(self) -> bool:
        return self.rotary_emb.round_through_float16

    @official_numerics.setter
    def official_numerics(self, enabled: bool) -> None:
        self.rotary_emb.round_through_float16 = bool(enabled)

    def run_after_prefix(
        self, inputs_embeds: torch.Tensor, prefix: PrefixState | None = None, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, PrefixState]:
        """Run ``inputs_embeds`` (N, L, hidden) as the continuation of ``prefix``.

        Row ``i`` continues prefix row ``rows[i]`` (``rows=None``: the prefix has one row, or
        exactly N). Positions continue after the prefix. Returns the final-layer-normed hidden
        states (N, L, hidden) and the keys/values of prefix and continuation together.
        """
        batch, length = inputs_embeds.shape[:2]
        start = 0 if prefix is None else prefix.length
        pasts = [None] * len(self.layers) if prefix is None else prefix.select(rows, batch)
        position_ids = torch.arange(start, start + length, device=inputs_embeds.device).unsqueeze(0)
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)
        # Causal attention is the only mask: the only padding is on the right of the question
        # batch, and causality keeps it from reaching the real tokens.
        mask = causal_mask(start, length, inputs_embeds.dtype, inputs_embeds.device)
        hidden = inputs_embeds
        keys, values = [], []
        for layer, past in zip(self.layers, pasts):
            hidden, key, value = layer(hidden, cos, sin, mask, past)
            keys.append(key)
            values.append(value)
        return self.final_layernorm(hidden), PrefixState(keys=tuple(keys), values=tuple(values))
