"""Image and mask preparation: bit-exact against the official evaluation's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segearth_model.config import SegEarthR1Config
from segearth_model.preprocess import PadInfo, normalize, resize_and_pad, resize_mask_nearest, unpad_and_resize

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE_INPUTS = SHARED / "conformance" / "tiny_inputs.safetensors"


@pytest.fixture(scope="module")
def fixture_inputs():
    if not FIXTURE_INPUTS.is_file():
        pytest.skip("../shared/conformance/tiny_inputs.safetensors not present")
    from safetensors.torch import load_file

    return load_file(str(FIXTURE_INPUTS))


def test_resize_and_pad_matches_official_preprocessing_bit_for_bit(fixture_inputs):
    raw = fixture_inputs["raw_image_rgb_uint8"].numpy()
    canvas, info = resize_and_pad(raw, size=256)
    assert canvas.dtype == np.uint8 and canvas.shape == (256, 256, 3)
    # 300x200 -> long side 256, short side int(200 * 256 / 300) = 170, pad 86 split 43/43.
    assert info == PadInfo(top=43, left=0, new_h=170, new_w=256, orig_h=200, orig_w=300, size=256)
    expected = fixture_inputs["preprocessed_image_chw_uint8"].numpy()
    np.testing.assert_array_equal(canvas.transpose(2, 0, 1), expected)


def test_normalize_matches_official_model_input(fixture_inputs):
    chw = fixture_inputs["preprocessed_image_chw_uint8"]
    images = normalize(chw[None])
    assert images.dtype == torch.float32
    assert torch.equal(images, fixture_inputs["images"])


def test_padding_normalises_to_minus_mean_over_std():
    images = normalize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), SegEarthR1Config())
    expected = torch.tensor([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375])
    torch.testing.assert_close(images[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        # (top, left, new_h, new_w): the short side is truncated, the pad split floor/ceil.
        (200, 300, (43, 0, 170, 256)),
        (300, 200, (0, 43, 256, 170)),
        (64, 64, (0, 0, 256, 256)),
        (1000, 3, (0, 127, 256, 1)),
        (999, 1000, (0, 0, 255, 256)),
    ],
)
def test_geometry_long_side_to_size_and_centred(height, width, expected):
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    canvas, info = resize_and_pad(image, size=256)
    top, left, new_h, new_w = expected
    assert (info.top, info.left, info.new_h, info.new_w) == expected
    inside = np.zeros((256, 256), dtype=bool)
    inside[top : top + new_h, left : left + new_w] = True
    assert (canvas[inside] == 200).all()
    assert (canvas[~inside] == 0).all()


def test_upscaling_small_image():
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[:, 10:] = 255
    canvas, info = resize_and_pad(image, size=64)
    assert (info.new_h, info.new_w, info.top) == (32, 64, 16)
    assert (canvas[16:48, :30] == 0).all() and (canvas[16:48, 34:] == 255).all()


def test_rejects_non_uint8_or_wrong_rank():
    with pytest.raises(ValueError):
        resize_and_pad(np.zeros((10, 10, 3), dtype=np.float32), size=32)
    with pytest.raises(ValueError):
        resize_and_pad(np.zeros((10, 10), dtype=np.uint8), size=32)


def test_mask_follows_the_image_with_nearest_neighbour():
    mask = np.zeros((200, 300), dtype=np.uint8)
    mask[:, 150:] = 1
    _, info = resize_and_pad(np.zeros((200, 300, 3), dtype=np.uint8), size=256)
    canvas = resize_mask_nearest(mask, info)
    assert canvas.shape == (256, 256) and canvas.dtype == np.uint8
    assert set(np.unique(canvas)) == {0, 1}
    assert (canvas[:43] == 0).all() and (canvas[213:] == 0).all()
    assert (canvas[43:213, :127] == 0).all() and (canvas[43:213, 129:] == 1).all()
    bool_canvas = resize_mask_nearest(mask.astype(bool), info)
    assert bool_canvas.dtype == np.bool_
    np.testing.assert_array_equal(bool_canvas, canvas.astype(bool))


def test_mask_of_wrong_size_is_rejected():
    _, info = resize_and_pad(np.zeros((20, 30, 3), dtype=np.uint8), size=64)
    with pytest.raises(ValueError):
        resize_mask_nearest(np.zeros((30, 20), dtype=np.uint8), info)


def test_unpad_and_resize_returns_original_geometry():
    info = PadInfo(top=43, left=0, new_h=170, new_w=256, orig_h=200, orig_w=300, size=256)
    mask = torch.zeros(2, 256, 256, dtype=torch.bool)
    mask[:, 43:213, :] = True
    out = unpad_and_resize(mask, info)
    assert out.shape == (2, 200, 300) and out.dtype == torch.bool and bool(out.all())

    logits = torch.full((1, 1, 256, 256), -5.0)
    logits[..., 43:213, :] = 3.0
    out = unpad_and_resize(logits, info)
    assert out.shape == (1, 1, 200, 300)
    torch.testing.assert_close(out, torch.full((1, 1, 200, 300), 3.0))

    as_numpy = unpad_and_resize(np.ones((256, 256), dtype=np.uint8), info)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.shape == (200, 300) and (as_numpy == 1).all()


def test_unpad_rejects_wrong_canvas():
    info = PadInfo(top=0, left=0, new_h=64, new_w=64, orig_h=10, orig_w=10, size=64)
    with pytest.raises(ValueError):
        unpad_and_resize(torch.zeros(1, 32, 32), info)
