"""The description projection: question hidden states + image features -> one decoder query.

The language model's hidden states over the question span (question tokens and ``[SEG]``)
are mean-pooled. The pooled vector is projected twice: directly, and through a one-layer
perceiver in which it attends to the projected last Swin stage. The two results are
concatenated and projected to the mask decoder's width, giving the single query that
the mask decoder refines.

The released code also pushes every un-pooled question row through the perceiver as
extra latents, but a latent only ever attends to the image and to the pooled row, and only
the pooled row is read at the end, so those rows never influence a mask and are skipped.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DescriptionConfig


class PerceiverAttention(nn.Module):
    """Latents attend to ``media ‖ latents``; no biases, as in Flamingo's resampler."""

    def __init__(self, dim: int, heads: int, dim_head: int, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim, eps=eps)
        self.norm_latents = nn.LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """``latents`` (B, L, dim), ``media`` (B, N, dim) -> attention output (B, L, dim)."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self._split_heads(self.to_q(latents)) * self.dim_head**-0.5
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int, eps: float) -> nn.Sequential:
    inner = dim * mult
    # Index layout (0 LN, 1 Linear, 2 GELU, 3 Linear) is the checkpoint's key layout.
    return nn.Sequential(
        nn.LayerNorm(dim, eps=eps),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class DescriptionPerceiver(nn.Module):
    """``depth`` blocks of (perceiver attention, feed-forward), both residual, then a LayerNorm."""

    def __init__(self, config: DescriptionConfig):
        super().__init__()
        dim = config.additional_dim
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, config.perceiver_heads, config.perceiver_dim_head, config.layer_norm_eps),
                    _feed_forward(dim, config.ff_mult, config.layer_norm_eps),
                ]
            )
            for _ in range(config.perceiver_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            latents = attention(latents, media) + latents
            latents = feed_forward(latents) + latents
        return self.norm(latents)


def mean_over_spans(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden[i, :lengths[i]]`` for each row: right padding is left out."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    keep = positions.unsqueeze(0) < lengths.unsqueeze(1)
    # Summed in float32 so that a bfloat16 model pools as precisely as the float32 release.
    total = torch.where(keep.unsqueeze(-1), hidden.float(), 0.0).sum(dim=1)
    return (total / lengths.float().unsqueeze(1)).to(hidden.dtype)


def description_query(
    pooled: torch.Tensor,
    local_tokens: torch.Tensor,
    *,
    origin_projector: nn.Module,
    text_projector: nn.Module,
    perceiver: DescriptionPerceiver,
    query_projector: nn.Module,
) -> torch.Tensor:
    """The mask decoder's query.

    ``pooled`` (N, hidden): pooled question states; ``local_tokens`` (N, T, additional_dim):
    the last Swin stage after ``local_project``, one row per question. Returns (N, 1, query_dim).
    """
    pooled = pooled.unsqueeze(1)
    direct = origin_projector(pooled)
    attended = perceiver(text_projector(pooled), local_tokens)
    return query_projector(torch.cat([direct, attended], dim=-1))

