"""Multi-scale deformable-attention pixel decoder, in plain PyTorch.

The released model runs a 6-layer deformable-attention encoder over the res5, res4 and
res3 maps (projected to ``conv_dim`` channels), then one FPN step onto res2 that gives
the per-pixel ``mask_features``.

Deformable attention samples, for every query, head, level and point, the value map
bilinearly at ``loc * size - 0.5`` (zero outside the map; grid_sample's ``bilinear``,
``padding_mode="zeros"``, ``align_corners=False`` convention). Instead of one
``grid_sample`` per level over a channels-first map, which touches each channel plane
separately, this file folds the attention weight into the four bilinear corner weights
and lets ``embedding_bag`` gather and sum the channels-last value rows: one call per
layer for all levels, heads and points, with contiguous 32-float rows.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import PixelDecoderConfig
from .position_encoding import PositionEmbeddingSine

# Query rows handled per gather call: keeps the index and weight buffers cache-sized.
_QUERY_CHUNK = 2048
# Bytes of one block of feed-forward hidden activations.
_FFN_BLOCK_BYTES = 4 << 20


class _SamplingTable:
    """A multi-level value map prepared for bilinear sampling by ``embedding_bag``.

    Each level's map gets a zero border (1 before, 2 after, on both axes). Pixel
    coordinates clamped to [-1, size] then always land on corners inside the table, and a
    corner outside the real map reads an exact zero, which is what bilinear sampling with
    zero padding gives; no per-corner validity test is needed.

    Sample tensors are laid out (queries, M*L*P) with x and y kept apart, and every
    per-(head, level, point) constant is a row vector of that width, so all the
    elementwise work broadcasts over rows only and stays vectorised.
    """

    def __init__(
        self, value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]], level_start: Sequence[int], points: int
    ) -> None:
        batch, _, heads, head_dim = value.shape
        device = value.device
        levels = len(spatial_shapes)
        padded, padded_starts, offset = [], [], 0
        for (height, width), start in zip(spatial_shapes, level_start):
            level = value[:, start : start + height * width].view(batch, height, width, heads * head_dim)
            padded.append(F.pad(level, (0, 0, 1, 2, 1, 2)).flatten(1, 2))
            padded_starts.append(offset)
            offset += (height + 3) * (width + 3)
        self.rows = torch.cat(padded, 1).view(-1, head_dim)  # (B * S_padded * M, D)
        self.heads, self.levels, self.points, self.head_dim = heads, levels, points, head_dim
        self.rows_per_image = offset * heads

        def per_sample(values, dtype=torch.float32) -> torch.Tensor:
            """A per-level list broadcast to one (M*L*P,) row."""
            column = torch.tensor(values, device=device, dtype=dtype).view(1, levels, 1)
            return column.expand(heads, levels, points).reshape(-1)

        widths = [w for _, w in spatial_shapes]
        heights = [h for h, _ in spatial_shapes]
        self.size_x, self.size_y = per_sample(widths), per_sample(heights)
        self.half_x = per_sample([w / 2 for w in widths], torch.float64)
        self.half_y = per_sample([h / 2 for h in heights], torch.float64)
        self.row_step = per_sample([(w + 3) * heads for w in widths], torch.int32)
        head_index = torch.arange(heads, device=device, dtype=torch.int32).view(heads, 1, 1)
        head_index = head_index.expand(heads, levels, points)
        # Table row of padded pixel (0, 0), i.e. real pixel (-1, -1), of each (head, level).
        origin = per_sample([start + w + 3 + 1 for start, w in zip(padded_starts, widths)], torch.int32)
        self.origin = origin * heads + head_index.reshape(-1)
        self.low = torch.tensor(-1.0, device=device)

    def sample(
        self, image: int, loc_x: torch.Tensor, loc_y: torch.Tensor, attention: torch.Tensor
    ) -> torch.Tensor:
        """loc_x, loc_y, attention: (q, M*L*P), locations normalised -> (q, M*D)."""
        count = loc_x.shape[0]
        heads, width = self.heads, self.levels * self.points

        def pixel(loc, half, size):
            # grid_sample's (g + 1) * size/2 - 0.5 with g = 2*loc - 1, evaluated as its
            # CPU kernel does (one fused multiply-add, emulated by a float64 product).
            grid = 2 * loc - 1
            coord = ((grid + 1).double() * half - 0.5).float()
            # A NaN location reads as outside the map (zero) rather than a wild table index.
            coord = torch.minimum(torch.maximum(coord.nan_to_num_(nan=-1.0), self.low), size)
            corner = coord.floor()
            far = coord - corner  # weight of the east / south neighbour
            return corner.to(torch.int32), 1 - far, far

        ix, near_x, far_x = pixel(loc_x, self.half_x, self.size_x)
        iy, near_y, far_y = pixel(loc_y, self.half_y, self.size_y)
        row = iy * self.row_step + ix * heads + (self.origin + image * self.rows_per_image)
        # One bag of 4 corners x L levels x P points per (query, head).
        index = row.new_empty(count, heads, 4, width)
        row = row.view(count, heads, width)
        step = self.row_step.view(heads, width)
        torch.add(row, 0, out=index[:, :, 0])
        torch.add(row, heads, out=index[:, :, 1])
        torch.add(row, step, out=index[:, :, 2])
        torch.add(index[:, :, 2], heads, out=index[:, :, 3])
        north = (near_y * attention).view(count, heads, width)
        south = (far_y * attention).view(count, heads, width)
        west, east = near_x.view(count, heads, width), far_x.view(count, heads, width)
        if torch.is_grad_enabled():  # out= arguments do not record gradients
            weight = torch.stack([north * west, north * east, south * west, south * east], dim=2)
        else:
            weight = near_x.new_empty(count, heads, 4, width)
            torch.mul(north, west, out=weight[:, :, 0])
            torch.mul(north, east, out=weight[:, :, 1])
            torch.mul(south, west, out=weight[:, :, 2])
            torch.mul(south, east, out=weight[:, :, 3])
        bags = count * heads
        weight = weight.view(bags, -1).to(self.rows.dtype)
        sampled = F.embedding_bag(index.view(bags, -1), self.rows, per_sample_weights=weight, mode="sum")
        return sampled.view(count, heads * self.head_dim)


def deformable_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    level_start: Sequence[int],
    locations: torch.Tensor,
    attention: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted bilinear samples of a flattened multi-level value map.

    value: (B, S, M, D) with S the concatenated H_l*W_l tokens of all levels.
    locations: (B, Q, M, L, P, 2) normalised (x, y) per level (0 and 1 are the map edges).
    attention: (B, Q, M, L, P), already softmaxed.
    Returns (B, Q, M*D).
    """
    batch, num_queries = locations.shape[:2]
    table = _SamplingTable(value, spatial_shapes, level_start, locations.shape[4])
    loc_x = locations[..., 0].reshape(batch, num_queries, -1)
    loc_y = locations[..., 1].reshape(batch, num_queries, -1)
    attention = attention.reshape(batch, num_queries, -1)
    output = value.new_empty(batch, num_queries, value.shape[2] * value.shape[3])
    for b in range(batch):
        for q0 in range(0, num_queries, _QUERY_CHUNK):
            q1 = min(q0 + _QUERY_CHUNK, num_queries)
            output[b, q0:q1] = table.sample(b, loc_x[b, q0:q1], loc_y[b, q0:q1], attention[b, q0:q1])
    return output


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        level_start: Sequence[int],
    ) -> torch.Tensor:
        """query (B, Q, C); reference_points (B or 1, Q, 2) normalised (x, y), the same for
        every level (all maps are unpadded); input_flatten (B, S, C).

        Everything after the value projection runs on blocks of queries, so that the
        per-sample tensors (offsets, weights, corner indices) stay in cache.
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        width = heads * levels * points
        value = self.value_proj(input_flatten).view(batch, input_flatten.shape[1], heads, self.d_model // heads)
        table = _SamplingTable(value, spatial_shapes, level_start, points)
        # Offset outputs reordered from (M, L, P, xy) to (xy, M, L, P): x and y come out as
        # two contiguous halves of each row.
        order = torch.arange(2 * width, device=query.device).view(width, 2).t().reshape(-1)
        offset_weight = self.sampling_offsets.weight[order]
        offset_bias = self.sampling_offsets.bias[order]
        norm_x, norm_y = table.size_x, table.size_y
        ref_x = reference_points[..., 0:1].expand(-1, -1, width)
        ref_y = reference_points[..., 1:2].expand(-1, -1, width)

        sampled = query.new_empty(batch, num_queries, self.d_model)
        for b in range(batch):
            rb = min(b, reference_points.shape[0] - 1)
            for q0 in range(0, num_queries, _QUERY_CHUNK):
                q1 = min(q0 + _QUERY_CHUNK, num_queries)
                block = query[b, q0:q1]
                count = q1 - q0
                offsets = F.linear(block, offset_weight, offset_bias)
                loc_x = ref_x[rb, q0:q1] + offsets[:, :width] / norm_x
                loc_y = ref_y[rb, q0:q1] + offsets[:, width:] / norm_y
                logits = self.attention_weights(block).view(count * heads, levels * points)
                # Softmax over each head's L*P logits, computed with those logits as the outer
                # dimension: PyTorch's kernel is several times faster that way round.
                attention = logits.t().contiguous().softmax(0).t().reshape(count, width)
                sampled[b, q0:q1] = table.sample(b, loc_x, loc_y, attention)
        return self.output_proj(sampled)


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then a ReLU feed-forward."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start)
        src = self.norm1(attended.add_(src))
        if torch.is_grad_enabled():
            return self.norm2(self.linear2(F.relu(self.linear1(src))).add_(src))
        # Inference: the 4x wide hidden layer runs on row blocks that stay in cache; the
        # result accumulates into src, which nothing else holds.
        rows = src.view(-1, src.shape[-1])
        step = max(1, _FFN_BLOCK_BYTES // (self.linear1.out_features * rows.element_size()))
        for start in range(0, rows.shape[0], step):
            block = rows[start : start + step]
            block += self.linear2(F.relu_(self.linear1(block)))
        return self.norm2(src)


class DeformableEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], device) -> torch.Tensor:
        """(1, S, 2) pixel centres ``((j+0.5)/W, (i+0.5)/H)`` of every level, level by level."""
        points = []
        for height, width in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
        return torch.cat(points, 0)[None]

    def forward(self, src, pos, spatial_shapes, level_start):
        reference_points = self.reference_points(spatial_shapes, src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start)
        return src


class DeformableTransformerEncoderOnly(nn.Module):
    def __init__(self, d_model: int, n_heads: int, num_layers: int, d_ffn: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(n_levels, d_model))
        self.encoder = DeformableEncoder(
            num_layers, d_model=d_model, d_ffn=d_ffn, n_levels=n_levels, n_heads=n_heads, n_points=n_points
        )

    def forward(self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]):
        """Returns the flattened memory (B, S, C), the level shapes and the level starts."""
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, pos in enumerate(pos_embeds)],
            1,
        )
        level_start = [0]
        for height, width in spatial_shapes[:-1]:
            level_start.append(level_start[-1] + height * width)
        memory = self.encoder(src_flat, pos_flat, spatial_shapes, level_start)
        return memory, spatial_shapes, level_start


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: ``forward(features)`` with ``features`` = (res2, res3, res4, res5) NCHW.

    Returns ``(mask_features, transformer_encoder_features, multi_scale_features)``:
    mask_features (B, mask_dim, H2, W2) at res2 resolution, the encoder output at res5
    resolution, and the three encoder outputs ordered res5, res4, res3 (low to high
    resolution), which the mask decoder cycles through.
    """

    def __init__(self, config: PixelDecoderConfig, in_channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"pixel decoder expects channels of res2..res5, got {list(in_channels)}")
        conv_dim, groups = config.conv_dim, config.group_norm_groups
        # Encoder inputs, lowest resolution first: res5, res4, res3.
        encoder_channels = list(in_channels[1:])[::-1]
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, conv_dim, kernel_size=1), nn.GroupNorm(groups, conv_dim))
            for ch in encoder_channels
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.transformer = DeformableTransformerEncoderOnly(
            d_model=conv_dim,
            n_heads=config.num_heads,
            num_layers=config.encoder_layers,
            d_ffn=config.dim_feedforward,
            n_levels=config.num_levels,
            n_points=config.num_points,
        )
        self.adapter_1 = nn.Sequential(
            nn.Conv2d(in_channels[0], conv_dim, kernel_size=1), nn.GroupNorm(groups, conv_dim), nn.ReLU()
        )
        self.layer_1 = nn.Sequential(
            nn.Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1), nn.GroupNorm(groups, conv_dim), nn.ReLU()
        )
        self.mask_features = nn.Conv2d(conv_dim, config.mask_dim, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]):
        res2, *encoder_inputs = features
        encoder_inputs = encoder_inputs[::-1]
        srcs = [proj(x) for proj, x in zip(self.input_proj, encoder_inputs)]
        pos = [self.pe_layer(x) for x in encoder_inputs]
        memory, spatial_shapes, level_start = self.transformer(srcs, pos)

        batch = memory.shape[0]
        outs = []
        for (height, width), start in zip(spatial_shapes, level_start):
            level = memory[:, start : start + height * width]
            outs.append(level.transpose(1, 2).reshape(batch, -1, height, width))

        lateral = self.adapter_1(res2)
        # The upsampling is bilinear (align_corners=False), as in the released model.
        fused = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.layer_1(fused)
        mask_features = self.mask_features(fused)
        return mask_features, outs[0], outs
