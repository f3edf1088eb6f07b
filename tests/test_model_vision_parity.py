"""Vision side of the model against the conformance fixture produced by the released code.

The fixture (../shared/conformance) holds a shrunken model's weights and the tensors the
released implementation computed from them; every comparison here is against those.
The remaining tests check behaviour the fixture cannot reach (batches, several
queries, grids that are not window multiples) against straightforward re-statements
of the released algorithms written out below.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conformance import conformance_file
from segearth_model.config import SegEarthR1Config
from segearth_model.mask_decoder import MaskDecoder
from segearth_model.pixel_decoder import MSDeformAttnPixelDecoder, deformable_sample
from segearth_model.position_encoding import sine_position_embedding
from segearth_model.projector import CompressionProjector
from segearth_model.swin import SwinBlock, SwinEncoder, make_window_plan

ATOL = 1e-5

PREFIXES = {
    "vision_tower": "model.vision_tower.",
    "mm_projector": "model.mm_projector.",
    "pixel_decoder": "pixel_decoder.",
    "predictor": "predictor.",
}


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    weights = load_file(str(conformance_file("tiny_weights.safetensors")))
    inputs = load_file(str(conformance_file("tiny_inputs.safetensors")))
    outputs = load_file(str(conformance_file("tiny_outputs.safetensors")))
    return weights, inputs, outputs


def _build(config: SegEarthR1Config) -> dict[str, torch.nn.Module]:
    return {
        "vision_tower": SwinEncoder(config.swin),
        "mm_projector": CompressionProjector(config.projector),
        "pixel_decoder": MSDeformAttnPixelDecoder(config.pixel_decoder, config.swin.stage_channels),
        "predictor": MaskDecoder(config.mask_decoder, config.pixel_decoder.mask_dim),
    }


def _section(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def tiny_modules(fixture):
    weights, _, _ = fixture
    modules = _build(SegEarthR1Config.tiny())
    for name, module in modules.items():
        module.load_state_dict(_section(weights, PREFIXES[name]), strict=True)
        module.eval()
    return modules


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{name}: max |diff| {diff:.3g} > {atol:g}"


# ---------------------------------------------------------------------------- loading


def test_vision_keys_strict_load(fixture):
    weights, _, _ = fixture
    modules = _build(SegEarthR1Config.tiny())
    for name, module in modules.items():
        section = _section(weights, PREFIXES[name])
        result = module.load_state_dict(section, strict=False)
        assert not result.missing_keys, f"{name}: missing {result.missing_keys[:5]}"
        assert not result.unexpected_keys, f"{name}: unexpected {result.unexpected_keys[:5]}"
        for key, value in module.state_dict().items():
            assert value.shape == section[key].shape, f"{name}.{key}"
            assert value.dtype == section[key].dtype, f"{name}.{key}"


def test_vision_keys_match_released_manifest():
    """The full-size modules carry exactly the released checkpoint's keys and shapes."""
    manifest = json.loads(conformance_file("state_dict_manifest.json").read_text())["state_dict"]
    with torch.device("meta"):
        modules = _build(SegEarthR1Config())
    for name, module in modules.items():
        prefix = PREFIXES[name]
        expected = {k[len(prefix) :]: v for k, v in manifest.items() if k.startswith(prefix)}
        ours = module.state_dict()
        assert set(ours) == set(expected), f"{name}: {sorted(set(ours) ^ set(expected))[:6]}"
        for key, tensor in ours.items():
            assert list(tensor.shape) == expected[key]["shape"], f"{prefix}{key}"
            assert (expected[key]["kind"] == "buffer") == (key.endswith("relative_position_index")), key


# ---------------------------------------------------------------------------- fixture parity


def test_swin_stage_outputs(fixture, tiny_modules):
    _, inputs, outputs = fixture
    with torch.no_grad():
        features = tiny_modules["vision_tower"](inputs["images"])
    for level, feature in zip(range(2, 6), features):
        _assert_close(feature, outputs[f"vision.res{level}"], f"vision.res{level}")


def test_projector_visual_tokens(fixture, tiny_modules):
    _, _, outputs = fixture
    with torch.no_grad():
        tokens = tiny_modules["mm_projector"](outputs["vision.res5"])
    _assert_close(tokens, outputs["projector.visual_tokens"], "projector.visual_tokens")


def test_projector_rejects_other_grid(tiny_modules):
    with pytest.raises(ValueError, match="expects"):
        tiny_modules["mm_projector"](torch.zeros(1, 128, 16, 16))


def test_pixel_decoder_outputs(fixture, tiny_modules):
    _, _, outputs = fixture
    features = [outputs[f"vision.res{level}"] for level in range(2, 6)]
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = tiny_modules["pixel_decoder"](features)
    _assert_close(mask_features, outputs["pixel_decoder.mask_features"], "pixel_decoder.mask_features")
    _assert_close(
        encoder_features, outputs["pixel_decoder.transformer_encoder_features"], "transformer_encoder_features"
    )
    assert len(multi_scale) == 3
    for i, feature in enumerate(multi_scale):
        _assert_close(feature, outputs[f"pixel_decoder.multi_scale_features.{i}"], f"multi_scale_features.{i}")


def test_mask_decoder_predictions(fixture, tiny_modules):
    _, _, outputs = fixture
    multi_scale = [outputs[f"pixel_decoder.multi_scale_features.{i}"] for i in range(3)]
    with torch.no_grad():
        pred, aux = tiny_modules["predictor"](
            multi_scale, outputs["pixel_decoder.mask_features"], outputs["seg.SEG_embedding"], return_aux=True
        )
    _assert_close(pred, outputs["predictor.pred_masks"], "predictor.pred_masks")
    assert len(aux) == 3
    for i, masks in enumerate(aux):
        _assert_close(masks, outputs[f"predictor.aux_pred_masks.{i}"], f"predictor.aux_pred_masks.{i}")

    upsampled = F.interpolate(pred, size=(256, 256), mode="bilinear", align_corners=False)[0]
    _assert_close(upsampled, outputs["final.mask_logits_upsampled"], "final.mask_logits_upsampled")
    # Binary mask: compare where the released logit is not within rounding of the threshold.
    reference_logits = outputs["final.mask_logits_upsampled"][0]
    confident = reference_logits.abs() > 1e-3
    binary = (upsampled[0] > 0).to(torch.uint8)
    assert torch.equal(binary[confident], outputs["final.binary_mask"][confident])


def test_image_to_mask_chain(fixture, tiny_modules):
    """Images -> Swin -> pixel decoder -> mask decoder, each fed by our own previous stage."""
    _, inputs, outputs = fixture
    with torch.no_grad():
        features = tiny_modules["vision_tower"](inputs["images"])
        mask_features, _, multi_scale = tiny_modules["pixel_decoder"](features)
        pred = tiny_modules["predictor"](multi_scale, mask_features, outputs["seg.SEG_embedding"])
    # Each stage adds its own float32 rounding (about 7e-6 here), hence the looser bound.
    _assert_close(pred, outputs["predictor.pred_masks"], "chained predictor.pred_masks", atol=5e-5)


# ---------------------------------------------------------------------------- behaviour beyond the fixture


def test_queries_are_independent(fixture, tiny_modules):
    _, _, outputs = fixture
    multi_scale = [outputs[f"pixel_decoder.multi_scale_features.{i}"] for i in range(3)]
    mask_features = outputs["pixel_decoder.mask_features"]
    generator = torch.Generator().manual_seed(0)
    queries = torch.cat([outputs["seg.SEG_embedding"], torch.randn(1, 3, 64, generator=generator)], dim=1)
    decoder = tiny_modules["predictor"]
    with torch.no_grad():
        together = decoder(multi_scale, mask_features, queries)
        for j in range(queries.shape[1]):
            alone = decoder(multi_scale, mask_features, queries[:, j : j + 1])
            _assert_close(together[:, j : j + 1], alone, f"query {j}")
    _assert_close(together[:, :1], outputs["predictor.pred_masks"], "first query")


def test_batch_entries_are_independent(fixture, tiny_modules):
    _, inputs, _ = fixture
    images = torch.cat([inputs["images"], inputs["images"].flip(-1)])
    encoder = tiny_modules["vision_tower"]
    decoder = tiny_modules["pixel_decoder"]
    with torch.no_grad():
        batched = encoder(images)
        batched_pd = decoder(batched)
        for b in range(2):
            single = encoder(images[b : b + 1])
            for level, (x, y) in enumerate(zip(batched, single)):
                _assert_close(x[b : b + 1], y, f"res{level + 2}[{b}]")
            single_pd = decoder(single)
            _assert_close(batched_pd[0][b : b + 1], single_pd[0], f"mask_features[{b}]")


def _reference_swin_block(block: SwinBlock, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The released block written out directly: norm1, zero pad, roll, window partition,
    attention with bias (+ -100 region mask), reverse, crop, residuals."""
    batch, _, channels = x.shape
    ws, shift = block.window_size, block.shift_size
    attn = block.attn
    heads, head_dim = attn.num_heads, channels // attn.num_heads
    shortcut = x
    x = block.norm1(x).view(batch, height, width, channels)
    pad_b, pad_r = (ws - height % ws) % ws, (ws - width % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = x.shape[1], x.shape[2]
    mask = None
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
        labels = torch.zeros(hp, wp)
        count = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                labels[hs, wsl] = count
                count += 1
        labels = labels.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
        mask = (labels[:, None, :] - labels[:, :, None]).ne(0).float() * -100.0
    windows = x.view(batch, hp // ws, ws, wp // ws, ws, channels).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(-1, ws * ws, channels)
    qkv = attn.qkv(windows).reshape(windows.shape[0], ws * ws, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1) + attn.relative_position_bias().unsqueeze(0)
    if mask is not None:
        n_windows = mask.shape[0]
        scores = scores.view(-1, n_windows, heads, ws * ws, ws * ws) + mask[None, :, None]
        scores = scores.view(-1, heads, ws * ws, ws * ws)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, ws * ws, channels)
    out = attn.proj(out)
    out = out.view(batch, hp // ws, wp // ws, ws, ws, channels).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, hp, wp, channels)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    out = out[:, :height, :width].reshape(batch, height * width, channels)
    x = shortcut + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("height,width,shift", [(13, 9, 0), (13, 9, 2), (10, 15, 2), (8, 8, 2)])
def test_swin_block_matches_direct_formulation(height, width, shift):
    torch.manual_seed(height * 100 + width + shift)
    block = SwinBlock(dim=16, num_heads=2, window_size=5 if shift else 4, shift_size=shift, mlp_ratio=4.0, eps=1e-5)
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)
        x = torch.randn(2, height * width, 16)
        plan = make_window_plan(height, width, block.window_size, shift, x.device, windows_per_chunk=3)
        ours = block(x, plan)
        reference = _reference_swin_block(block, x, height, width)
    _assert_close(ours, reference, f"block {height}x{width} shift {shift}")


def test_swin_handles_sizes_that_are_not_window_multiples():
    torch.manual_seed(0)
    config = SegEarthR1Config.tiny().swin
    encoder = SwinEncoder(config).eval()
    with torch.no_grad():
        outs = encoder(torch.randn(1, 3, 100, 76))
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 19), (13, 10), (7, 5), (4, 3)]
    assert all(torch.isfinite(o).all() for o in outs)


def _reference_deformable_sample(value, shapes, starts, locations, attention):
    """The released per-level ``grid_sample`` formulation (zeros padding, align_corners=False)."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        v = value[:, start : start + h * w].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * head_dim, queries).transpose(1, 2)


def test_deformable_sampling_matches_grid_sample():
    generator = torch.Generator().manual_seed(3)
    shapes = [(5, 7), (9, 4), (46, 50)]
    starts = [0, 35, 71]
    total = starts[-1] + 46 * 50
    batch, heads, head_dim, points = 2, 3, 8, 4
    queries = 4500  # more than one internal query chunk
    value = torch.randn(batch, total, heads, head_dim, generator=generator)
    # Locations reach well outside [0, 1] so that border and fully-outside corners are exercised.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.6 - 0.3
    attention = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator).softmax(-1)
    attention = attention.view(batch, queries, heads, len(shapes), points)
    ours = deformable_sample(value, shapes, starts, locations, attention)
    reference = _reference_deformable_sample(value, shapes, starts, locations, attention)
    _assert_close(ours, reference, "deformable sample", atol=2e-6)


def test_sine_position_embedding_values():
    pos = sine_position_embedding(3, 4, 8)
    assert pos.shape == (1, 16, 3, 4)
    # Channel 0 is sin of the normalised row coordinate, channel 8 sin of the column one.
    rows = torch.arange(1, 4, dtype=torch.float64) / 3 * 2 * math.pi
    cols = torch.arange(1, 5, dtype=torch.float64) / 4 * 2 * math.pi
    torch.testing.assert_close(pos[0, 0, :, 0].double(), rows.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 8, 0, :].double(), cols.sin(), atol=1e-5, rtol=0)
    # Channel 3 is cos of row / 10000^(2*1/8).
    torch.testing.assert_close(pos[0, 3, :, 0].double(), (rows / 10000 ** 0.25).cos(), atol=1e-5, rtol=0)


def test_gradient_mode_gives_same_outputs_and_backpropagates(fixture):
    """With autograd on, the modules take their non in-place paths; same numbers, and a
    backward pass goes through without in-place errors."""
    weights, inputs, outputs = fixture
    modules = _build(SegEarthR1Config.tiny())
    for name, module in modules.items():
        module.load_state_dict(_section(weights, PREFIXES[name]), strict=True)
    features = modules["vision_tower"](inputs["images"])
    mask_features, _, multi_scale = modules["pixel_decoder"](features)
    pred = modules["predictor"](multi_scale, mask_features, outputs["seg.SEG_embedding"])
    for level, feature in zip(range(2, 6), features):
        _assert_close(feature.detach(), outputs[f"vision.res{level}"], f"vision.res{level} (grad mode)")
    _assert_close(mask_features.detach(), outputs["pixel_decoder.mask_features"], "mask_features (grad mode)")
    pred.square().mean().backward()
    patch_grad = modules["vision_tower"].patch_embed.proj.weight.grad
    offset_grad = modules["pixel_decoder"].transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad
    assert patch_grad is not None and torch.isfinite(patch_grad).all() and patch_grad.abs().sum() > 0
    assert offset_grad is not None and torch.isfinite(offset_grad).all()
