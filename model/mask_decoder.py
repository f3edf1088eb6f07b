"""The masked-attention transformer decoder that turns description queries into masks.

The released model runs it with a single query (the description embedding) and a zero
query position. Several questions about the same image are handled here as several
queries of one image, each independent of the others:

* cross-attention never mixes queries (each query row has its own softmax and its own
  mask row);
* self-attention over a lone query is a softmax over one key, which is exactly 1, so it
  reduces to ``out_proj(v_proj(x))`` per query; computing it that way keeps the queries
  apart and gives the released single-query numbers;
* the feed-forward, norms and prediction heads are per query.

So ``forward(..., queries (B, M, C))`` equals M separate single-query runs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import MaskDecoderConfig
from .position_encoding import PositionEmbeddingSine


class PackedAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout
    (``in_proj_weight`` = stacked [q; k; v], ``in_proj_bias``, ``out_proj``)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.embed_dim
        return self.in_proj_weight[index * c : (index + 1) * c], self.in_proj_bias[index * c : (index + 1) * c]

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, blocked: torch.Tensor | None
    ) -> torch.Tensor:
        """query (B, Q, C); key/value (B, S, C); ``blocked`` (B, Q, S) bool, True = may not attend."""
        batch, num_queries, channels = query.shape
        length = key.shape[1]
        heads = self.num_heads
        head_dim = channels // heads
        q = F.linear(query, *self._projection(0)).view(batch, num_queries, heads, head_dim).transpose(1, 2)
        k = F.linear(key, *self._projection(1)).view(batch, length, heads, head_dim).transpose(1, 2)
        v = F.linear(value, *self._projection(2)).view(batch, length, heads, head_dim).transpose(1, 2)
        scores = torch.matmul(q * math.sqrt(1.0 / head_dim), k.transpose(-2, -1))  # (B, h, Q, S)
        if blocked is not None:
            scores = scores.masked_fill(blocked[:, None], float("-inf"))
        attended = torch.matmul(scores.softmax(-1), v)  # (B, h, Q, d)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, num_queries, channels))

    def single_key(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of each query with only itself: the softmax weight is exactly 1."""
        return self.out_proj(F.linear(x, *self._projection(2)))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = PackedAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, memory_with_pos, blocked):
        return self.norm(tgt + self.multihead_attn(tgt, memory_with_pos, memory, blocked))


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = PackedAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt):
        return self.norm(tgt + self.self_attn.single_key(tgt))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt):
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """``forward(multi_scale_features, mask_features, queries)``.

    multi_scale_features: three (B, C, h_l, w_l) maps, lowest resolution first; layer i
    attends to level ``i % 3``. mask_features: (B, mask_dim, Hm, Wm). queries: (B, M, C).
    Returns the final mask logits (B, M, Hm, Wm); with ``return_aux=True`` returns
    ``(pred_masks, aux_pred_masks)``, adding the ``num_layers`` earlier predictions (from
    the initial queries and after each layer but the last).
    """

    def __init__(self, config: MaskDecoderConfig, mask_dim: int) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.num_layers = config.num_layers
        self.num_feature_levels = config.num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden, config.num_heads) for _ in range(config.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden, config.num_heads) for _ in range(config.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden, config.dim_feedforward) for _ in range(config.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden)
        # Carried by the checkpoint, not read at inference (learned queries of the
        # training recipe and its class-matching heads).
        self.query_feat = nn.Embedding(config.num_object_queries, hidden)
        self.query_embed = nn.Embedding(config.num_object_queries, hidden)
        self.SEG_query_embed = nn.Embedding(config.num_object_queries + 1, hidden)
        self.new_query_embed = nn.Embedding(1, hidden)
        self.level_embed = nn.Embedding(config.num_feature_levels, hidden)
        self.mask_embed = MLP(hidden, hidden, mask_dim, 3)
        self.SEG_proj = MLP(hidden, hidden, hidden, 2)
        self.CLASS_proj = MLP(hidden, hidden, hidden, 2)

    def prediction_head(
        self, output: torch.Tensor, mask_features: torch.Tensor, target_size
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask logits (B, M, Hm, Wm) and, if ``target_size`` is given, the next layer's
        attention block mask (B, M, h*w): True where the resized mask has sigmoid < 0.5."""
        embed = self.mask_embed(self.decoder_norm(output))
        masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        if target_size is None:
            return masks, None
        resized = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        return masks, blocked

    def forward(
        self,
        multi_scale_features: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        queries: torch.Tensor,
        *,
        return_aux: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"mask decoder expects {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        if queries.dim() != 3 or queries.shape[-1] != self.config.hidden_dim:
            raise ValueError(
                f"mask decoder expects queries (B, M, {self.config.hidden_dim}), got {tuple(queries.shape)}"
            )
        batch = mask_features.shape[0]
        if queries.shape[0] != batch:
            raise ValueError(f"queries batch {queries.shape[0]} does not match features batch {batch}")

        # Each level serves several layers: its memory and keys input are built once.
        memories, keys_in, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            sizes.append(tuple(feature.shape[-2:]))
            position = self.pe_layer(feature).flatten(2).transpose(1, 2)
            memory = feature.flatten(2).transpose(1, 2) + self.level_embed.weight[level]
            memories.append(memory)
            keys_in.append(memory + position)

        output = queries
        predictions = []
        masks, blocked = self.prediction_head(output, mask_features, sizes[0])
        predictions.append(masks)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # A query whose mask blocks every location attends everywhere instead.
            blocked = blocked & ~blocked.all(-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](output, memories[level], keys_in[level], blocked)
            output = self.transformer_self_attention_layers[i](output)
            output = self.transformer_ffn_layers[i](output)
            last = i == self.num_layers - 1
            next_size = None if last else sizes[(i + 1) % self.num_feature_levels]
            masks, blocked = self.prediction_head(output, mask_features, next_size)
            predictions.append(masks)
        if return_aux:
            return predictions[-1], predictions[:-1]
        return predictions[-1]
