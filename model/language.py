"""The Phi-1.5 language model, run through transformers' own ``PhiModel``.

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

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PhiConfig, PhiModel
from transformers.cache_utils import DynamicCache
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from .config import LanguageConfig


def build_phi_config(language: LanguageConfig, pad_token_id: int | None = None) -> PhiConfig:
    phi_config = PhiConfig(
        vocab_size=language.vocab_size,
        hidden_size=language.hidden_size,
        intermediate_size=language.intermediate_size,
        num_hidden_layers=language.num_hidden_layers,
        num_attention_heads=language.num_attention_heads,
        hidden_act=language.hidden_act,
        layer_norm_eps=language.layer_norm_eps,
        max_position_embeddings=language.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": language.rope_theta,
            "partial_rotary_factor": language.partial_rotary_factor,
        },
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        qk_layernorm=False,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
    )
    # The released model ran eager attention with an fp32 softmax; SDPA kernels reorder the
    # reductions and would cost parity.
    phi_config._attn_implementation = "eager"
    return phi_config


class RoundedRotaryEmbedding(PhiRotaryEmbedding):
    """Phi's rotary embedding, optionally rounding cos/sin through float16 like the official loader."""

    def __init__(self, config: PhiConfig):
        super().__init__(config)
        self.round_through_float16 = False

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.round_through_float16:
            return super().forward(x, position_ids)
        # Ask for float32 tables (only x's device and dtype are read), round them to float16,
        # and only then convert to the compute dtype, as the official float16 buffers were.
        probe = torch.empty(0, device=x.device, dtype=torch.float32)
        cos, sin = super().forward(probe, position_ids)
        return cos.half().to(x.dtype), sin.half().to(x.dtype)


@dataclass(frozen=True)
class PrefixState:
    """Keys and values of an already-run prompt prefix, one pair per layer.

    Each tensor is ``(batch, heads, length, head_dim)``. The state is never mutated: every
    continuation builds its own cache from it.
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

    def select(self, rows: torch.Tensor | None, batch_size: int) -> DynamicCache:
        """A fresh cache whose row ``i`` holds prefix row ``rows[i]``.

        ``rows=None`` broadcasts a single-row prefix to ``batch_size`` rows.
        """
        if rows is None and self.batch_size not in (1, batch_size):
            raise ValueError(f"prefix has {self.batch_size} rows, cannot serve a batch of {batch_size}")

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.expand(batch_size, -1, -1, -1) if rows is None else t.index_select(0, rows)

        return DynamicCache(ddp_cache_data=[(pick(k), pick(v)) for k, v in zip(self.keys, self.values)])


class SegEarthPhiModel(PhiModel):
    """transformers' ``PhiModel`` holding the vision tower and projector, with prefix caching."""

    def __init__(self, config: PhiConfig, vision_tower: nn.Module, mm_projector: nn.Module):
        super().__init__(config)
        self.rotary_emb = RoundedRotaryEmbedding(config)
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
        cache = DynamicCache() if prefix is None else prefix.select(rows, batch)
        position_ids = torch.arange(start, start + length, device=inputs_embeds.device).unsqueeze(0)
        # No attention mask: the only padding is on the right of the question batch, and
        # causal attention keeps it from reaching the real tokens.
        output = self(inputs_embeds=inputs_embeds, position_ids=position_ids, cache=cache, use_cache=True)
        keys = tuple(layer.keys for layer in output.cache.layers)
        values = tuple(layer.values for layer in output.cache.layers)
        return output.last_hidden_state, PrefixState(keys=keys, values=values)
