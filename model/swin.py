"""Swin Transformer backbone (the vision tower), numerically equal to the released one.

Details that the released numbers depend on, and that this file keeps:

* each block pads its token grid to a multiple of the window size *after* ``norm1``, with
  zero vectors, and those padded tokens are **not** masked in attention;
* shifted-window attention masks cross-region pairs with ``-100.0`` (not ``-inf``);
* patch merging concatenates ``[0::2,0::2], [1::2,0::2], [0::2,1::2], [1::2,1::2]``;
* exact (erf) GELU.

Speed: padding, the cyclic shift and the window partition are one row gather with a
precomputed index (and an index copy on the way back); the qkv and output projections
run only on real tokens (a zero padded token projects to exactly the qkv bias, kept as
one extra row); windows go through ``scaled_dot_product_attention`` in chunks that stay
in cache, with the relative-position bias as the additive mask. The shift mask is only
non-zero in the last window row and column, so only those windows carry a per-window
mask; all others share one (heads, N, N) bias. Under ``torch.no_grad`` the MLP runs on
row blocks and residuals are added in place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import SwinConfig

SHIFT_MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) int64 index into the (2w-1)^2 bias table, N = w*w, row-major token order."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative = relative + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


@dataclass(frozen=True)
class WindowChunk:
    """A run of consecutive windows that go through attention together.

    ``gather``: for each window slot, the qkv row it reads; padding slots read row H*W,
    which holds the qkv bias (what a zero padded token projects to).
    ``tokens`` / ``keep``: the real tokens of the chunk and their chunk-local slots
    (``keep`` is None when every slot is real, in which case ``tokens`` is ``gather``).
    ``shift_mask``: (windows, N, N) additive -100 mask, or None where no pair crosses regions.
    """

    num_windows: int
    gather: torch.Tensor
    tokens: torch.Tensor
    keep: torch.Tensor | None
    shift_mask: torch.Tensor | None


@dataclass(frozen=True)
class WindowPlan:
    """How a (H, W) token grid maps to (possibly shifted, padded) windows, in chunks."""

    num_tokens: int
    chunks: tuple[WindowChunk, ...]


def make_window_plan(
    height: int, width: int, window: int, shift: int, device: torch.device, windows_per_chunk: int | None = None
) -> WindowPlan:
    """The plan for one grid; plans are pure functions of their arguments and are kept."""
    # A plan first built under inference_mode would hold inference tensors, which a later
    # gradient-tracking call cannot save for backward; build every plan as normal tensors.
    with torch.inference_mode(False):
        return _cached_window_plan(height, width, window, shift, str(torch.device(device)), windows_per_chunk)


@functools.lru_cache(maxsize=64)
def _cached_window_plan(
    height: int, width: int, window: int, shift: int, device: str, windows_per_chunk: int | None
) -> WindowPlan:
    padded_h = -(-height // window) * window
    padded_w = -(-width // window) * window
    win_rows, win_cols = padded_h // window, padded_w // window
    num_tokens = window * window
    pad_id = height * width

    # Position (i, j) of the shifted grid holds padded-grid position ((i+s) % Hp, (j+s) % Wp).
    src_i = (torch.arange(padded_h) + shift) % padded_h
    src_j = (torch.arange(padded_w) + shift) % padded_w
    real = (src_i[:, None] < height) & (src_j[None, :] < width)
    flat = torch.where(real, src_i[:, None] * width + src_j[None, :], torch.full(real.shape, pad_id, dtype=torch.long))
    # (win_rows, window, win_cols, window) -> (windows, window*window), row-major in both.
    slots = flat.view(win_rows, window, win_cols, window).permute(0, 2, 1, 3).reshape(win_rows * win_cols, num_tokens)

    if shift > 0:
        # Region labels on the shifted grid, as the released code builds its mask.
        def region(n: int) -> torch.Tensor:
            idx = torch.arange(n)
            return (idx >= n - window).long() + (idx >= n - shift).long()

        label = region(padded_h)[:, None] * 3 + region(padded_w)[None, :]
        label = label.view(win_rows, window, win_cols, window).permute(0, 2, 1, 3).reshape(-1, num_tokens)
        crosses = label[:, :, None] != label[:, None, :]
        is_border = crosses.flatten(1).any(1)
    else:
        crosses = None
        is_border = torch.zeros(win_rows * win_cols, dtype=torch.bool)

    step = windows_per_chunk or len(slots)
    chunks = []
    for group in (torch.nonzero(~is_border).flatten(), torch.nonzero(is_border).flatten()):
        for start in range(0, len(group), step):
            members = group[start : start + step]
            ids = slots[members].flatten()
            is_pad = ids == pad_id
            mask = None
            if crosses is not None and bool(is_border[members[0]]):
                mask = torch.zeros(len(members), num_tokens, num_tokens).masked_fill(crosses[members], SHIFT_MASK_VALUE)
            has_pad = bool(is_pad.any())
            keep = torch.nonzero(~is_pad).flatten() if has_pad else None
            chunks.append(
                WindowChunk(
                    num_windows=len(members),
                    gather=ids.to(device),
                    tokens=(ids[keep] if has_pad else ids).to(device),
                    keep=keep.to(device) if has_pad else None,
                    shift_mask=mask.to(device) if mask is not None else None,
                )
            )
    return WindowPlan(num_tokens=height * width, chunks=tuple(chunks))


# Bytes of one chunk's gathered qkv rows, and of one block of MLP hidden activations:
# small enough to stay in cache and to be recycled by the allocator.
_CHUNK_BYTES = 4 << 20
_MLP_BLOCK_BYTES = 4 << 20


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    @property
    def windows_per_chunk(self) -> int:
        window_bytes = self.window_size**2 * 3 * self.dim * 4
        return max(1, _CHUNK_BYTES // window_bytes)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def _qkv_with_padding_row(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W + 1, 3C): qkv of every token plus a last row equal to the qkv bias, which
        is exactly what a zero padded token projects to."""
        batch, length, _ = x.shape
        bias = self.qkv.bias.view(1, 1, -1).expand(batch, 1, -1)
        if torch.is_grad_enabled():
            return torch.cat([self.qkv(x), bias], dim=1)
        qkv = x.new_empty(batch, length + 1, self.qkv.out_features)
        for b in range(batch):
            torch.addmm(self.qkv.bias, x[b], self.qkv.weight.t(), out=qkv[b, :length])
        qkv[:, length] = bias[:, 0]
        return qkv

    def forward(self, x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """``x`` (B, H*W, C) already normalised; returns proj(attention) for the real tokens."""
        batch, length, channels = x.shape
        n = self.window_size * self.window_size
        heads, head_dim = self.num_heads, self.head_dim

        qkv = self._qkv_with_padding_row(x)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, heads, N, N)
        out = torch.empty_like(x)
        for chunk in plan.chunks:
            part = qkv.index_select(1, chunk.gather)  # (B, w*N, 3C)
            part = part.view(batch * chunk.num_windows, n, 3, heads, head_dim)
            q, k, v = (part[:, :, i].transpose(1, 2) for i in range(3))
            mask = bias
            if chunk.shift_mask is not None:
                mask = bias + chunk.shift_mask.unsqueeze(1)
                if batch > 1:
                    mask = mask.repeat(batch, 1, 1, 1)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=self.scale)
            attended = attended.transpose(1, 2).reshape(batch, chunk.num_windows * n, channels)
            if chunk.keep is not None:
                attended = attended.index_select(1, chunk.keep)
            out.index_copy_(1, chunk.tokens, attended)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, eps: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        # The projection outputs are fresh tensors that autograd does not need again, so
        # the residuals are added into them in place.
        x = self.attn(self.norm1(x), plan).add_(x)
        if torch.is_grad_enabled():
            return self.mlp(self.norm2(x)).add_(x)
        # Inference: run the 4x wide hidden layer on row blocks that stay in cache, and
        # accumulate into x, which nothing else holds.
        normed = self.norm2(x).view(-1, x.shape[-1])
        rows = x.view(-1, x.shape[-1])
        step = max(1, _MLP_BLOCK_BYTES // (self.mlp.fc1.out_features * normed.element_size()))
        for start in range(0, rows.shape[0], step):
            rows[start : start + step] += self.mlp(normed[start : start + step])
        return x


class PatchMerging(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = x.view(batch, height, width, channels)
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # Axes (row, row parity, col, col parity); concatenation order is
        # (0,0), (1,0), (0,1), (1,1) in (row parity, col parity), i.e. col parity outer.
        x = x.view(batch, h2, 2, w2, 2, channels).permute(0, 1, 3, 4, 2, 5).reshape(batch, h2 * w2, 4 * channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        eps: float,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if b % 2 == 0 else self.shift_size, mlp_ratio, eps)
            for b in range(depth)
        )
        self.downsample = PatchMerging(dim, eps) if downsample else None

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        for block in self.blocks:
            # Plans are cached by make_window_plan, so the blocks of a stage share two.
            plan = make_window_plan(
                height, width, self.window_size, block.shift_size, x.device, block.attn.windows_per_chunk
            )
            x = block(x, plan)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, eps: float) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(B, 3, H, W) -> tokens (B, H/p * W/p, C) after the norm, and the grid size."""
        p = self.patch_size
        height, width = images.shape[-2:]
        if height % p or width % p:
            images = F.pad(images, (0, (p - width % p) % p, 0, (p - height % p) % p))
        x = self.proj(images)
        grid_h, grid_w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), grid_h, grid_w


class SwinEncoder(nn.Module):
    """Swin backbone returning the four stage outputs (res2..res5) in NCHW after norm0..3.

    Its state_dict keys are those under ``model.vision_tower.`` in the released checkpoint.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        eps = config.layer_norm_eps
        channels = config.stage_channels
        self.patch_embed = PatchEmbed(config.patch_size, config.in_channels, config.embed_dim, eps)
        num_stages = len(config.depths)
        self.layers = nn.ModuleList(
            SwinStage(
                channels[s],
                config.depths[s],
                config.num_heads[s],
                config.window_size,
                config.mlp_ratio,
                eps,
                downsample=s < num_stages - 1,
            )
            for s in range(num_stages)
        )
        for s in range(num_stages):
            self.add_module(f"norm{s}", nn.LayerNorm(channels[s], eps=eps))

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.config.stage_channels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"vision tower expects (B, {self.config.in_channels}, H, W) images, got {tuple(images.shape)}"
            )
        x, height, width = self.patch_embed(images)
        outputs = []
        for s, stage in enumerate(self.layers):
            x = stage(x, height, width)
            out = getattr(self, f"norm{s}")(x)
            outputs.append(out.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return tuple(outputs)
