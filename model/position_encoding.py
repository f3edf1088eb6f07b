"""The normalised sine position embedding shared by the pixel decoder and the mask decoder."""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_embedding(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Position embedding of an unmasked ``height x width`` grid, shape (1, 2*num_pos_feats, H, W).

    The arithmetic follows the released model step by step (float32 cumulative counts, the
    ``+ eps`` on the last count, ``temperature ** (2*floor(i/2)/F)``), so that the values
    agree bit for bit rather than merely mathematically.
    """
    ones = torch.ones((1, height, width), dtype=torch.float32, device=device)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale

    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)

    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingSine(nn.Module):
    """Sine embedding with ``normalize=True`` (scale 2*pi, temperature 1e4, eps 1e-6).

    It depends only on the spatial size, so each size is computed once and kept; the
    batch dimension is a broadcast view, not a copy.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2*num_pos_feats, H, W) for the spatial size of ``x`` (B, C, H, W)."""
        batch, _, height, width = x.shape
        key = (height, width, str(x.device))
        pos = self._cache.get(key)
        if pos is None:
            pos = sine_position_embedding(
                height, width, self.num_pos_feats, temperature=self.temperature, scale=self.scale, device=x.device
            )
            self._cache[key] = pos
        return pos.to(x.dtype).expand(batch, -1, -1, -1)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize=True"
