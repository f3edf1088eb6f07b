"""The token-compression connector that turns the last Swin stage into the LLM's visual tokens."""

from __future__ import annotations

import torch
from torch import nn

from .config import ProjectorConfig


class CompressionProjector(nn.Module):
    """res5 (B, C_in, 2g, 2g) -> (B, (g/2)^2, C_out) visual tokens.

    Two stride-2 3x3 convolutions, each followed by a LayerNorm over the whole (C, H, W)
    map with an elementwise affine of that full shape, then a 1x1 convolution. There is no
    activation anywhere: the released weights were trained that way. Because the norms
    are shaped by the grid, only one input size is accepted.
    """

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        g = config.grid_size
        c_in, c_out = config.in_channels, config.out_channels
        self.proj1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm([c_out, g, g], eps=config.layer_norm_eps)
        self.proj2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm([c_out, g // 2, g // 2], eps=config.layer_norm_eps)
        self.fc = nn.Conv2d(c_out, c_out, kernel_size=1)

    @property
    def expected_input_size(self) -> int:
        return 2 * self.config.grid_size

    def forward(self, res5: torch.Tensor) -> torch.Tensor:
        if res5.dim() != 4 or res5.shape[1] != self.config.in_channels or res5.shape[-2:] != (
            self.expected_input_size,
            self.expected_input_size,
        ):
            raise ValueError(
                f"visual token projector expects (B, {self.config.in_channels}, {self.expected_input_size}, "
                f"{self.expected_input_size}) features, got {tuple(res5.shape)}"
            )
        x = self.norm1(self.proj1(res5))
        x = self.norm2(self.proj2(x))
        x = self.fc(x)
        return x.flatten(2).transpose(1, 2)
