"""The streaming stitcher: row order, bounded buffers, weights, validity and misuse."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from segearth_cli.stitch import RowBlock, Stitcher, edge_ramp, logits_to_footprint, sigmoid
from segearth_cli.windows import plan_windows

S = 64


def fake_scene(width, height):
    return SimpleNamespace(path=Path("fake.tif"), width=width, height=height, crs=CRS.from_epsg(32633),
                           transform=Affine(1, 0, 0, 0, -1, 0))


def logit(probability):
    return float(np.log(probability / (1.0 - probability)))


def feed_all(stitcher, plan, value=0.5, valid_fn=None, questions=1):
    """Feed windows of the constant probability ``value``; returns (blocks, rows released after each window)."""
    blocks, released_after = [], []
    for window in plan:
        valid = np.ones((S, S), dtype=bool) if valid_fn is None else valid_fn(window)
        canvas = np.zeros((S, S), dtype=bool)
        canvas[window.dst_slices] = valid[window.dst_slices]
        blocks.extend(stitcher.add(window, np.full((questions, S, S), logit(value), np.float32), canvas))
        released_after.append(sum(b.height for b in blocks))
    blocks.extend(stitcher.finish())
    return blocks, released_after


def test_rows_come_out_once_in_order_and_early():
    plan = plan_windows(fake_scene(200, 300), mode="tiled", input_size=S, overlap=0.25)
    stitcher = Stitcher(plan, 2, block_rows=20)
    blocks, released_after = feed_all(stitcher, plan, questions=2)
    offsets = [b.row_off for b in blocks]
    assert offsets == sorted(offsets)
    assert sum(b.height for b in blocks) == 300
    assert all(b.row_off + b.height == n.row_off for b, n in zip(blocks, blocks[1:]))
    assert all(b.height <= 20 for b in blocks)
    assert all(b.probabilities.shape == (2, b.height, 200) and b.probabilities.dtype == np.float32 for b in blocks)
    # Rows above the second grid row are released as soon as the first grid row is done.
    first_row = plan.rows[0]
    assert released_after[len(first_row) - 1] == plan.rows[1][0].row_off
    assert released_after[len(first_row) - 2] == 0


def test_buffers_depend_on_width_and_window_height_not_scene_height():
    shapes = []
    for height in (200, 2000, 20000):
        plan = plan_windows(fake_scene(300, height), mode="tiled", input_size=S, overlap=0.125)
        stitcher = Stitcher(plan, 3)
        shapes.append((stitcher._blend._acc.shape, stitcher._blend._wsum.shape))
    assert shapes[0] == shapes[1] == shapes[2] == (((3, S, 300)), (S, 300))
    plan = plan_windows(fake_scene(300, 5000), mode="tiled", input_size=S, window=64)
    assert Stitcher(plan, 1)._blend._acc.shape == (1, 64, 300)


def test_footprints_larger_than_the_canvas_keep_canvases_not_footprint_sized_buffers():
    plan = plan_windows(fake_scene(3000, 2000), mode="tiled", input_size=S, window=1500, overlap=0.25)
    stitcher = Stitcher(plan, 1, block_rows=100)
    assert not hasattr(stitcher._blend, "_acc")
    blocks, _ = feed_all(stitcher, plan, value=0.3)
    assert sum(b.height for b in blocks) == 2000 and all(b.height <= 100 for b in blocks)
    np.testing.assert_allclose(np.concatenate([b.probabilities[0] for b in blocks]), 0.3, rtol=1e-6)
    assert stitcher._blend._kept == []  # every window forgotten once its rows were out


def test_a_constant_answer_stays_constant_through_the_blend():
    plan = plan_windows(fake_scene(230, 170), mode="tiled", input_size=S, overlap=0.5)
    blocks, _ = feed_all(Stitcher(plan, 1), plan, value=0.3)
    stitched = np.concatenate([b.probabilities[0] for b in blocks])
    np.testing.assert_allclose(stitched, 0.3, rtol=1e-6)
    assert all(b.valid.all() for b in blocks)


def test_invalid_and_skipped_windows_become_invalid_rows():
    plan = plan_windows(fake_scene(200, 130), mode="tiled", input_size=S, overlap=0.0)
    stitcher = Stitcher(plan, 1)
    blocks = []
    for window in plan:
        if window.col_off == 0:
            blocks.extend(stitcher.skip(window))
        else:
            valid = np.zeros((S, S), dtype=bool)
            valid[window.dst_slices] = True
            valid[window.dst_row_off, window.dst_col_off] = False  # one invalid input pixel
            blocks.extend(stitcher.add(window, np.full((1, S, S), logit(0.9), np.float32), valid))
    blocks.extend(stitcher.finish())
    valid = np.concatenate([b.valid for b in blocks])
    probability = np.concatenate([b.probabilities[0] for b in blocks])
    assert not valid[:, :64].any() and (probability[:, :64] == 0).all()
    # Row 0, columns 64..127 are read by one window only, which marked its first pixel invalid.
    assert not valid[0, 64] and valid[0, 65:128].all()
    assert valid[:, 64:].sum() > 0.99 * 130 * 136


def test_a_single_whole_window_streams_in_strips_without_scene_sized_buffers():
    plan = plan_windows(fake_scene(90, 5000), mode="whole", input_size=S)
    stitcher = Stitcher(plan, 1, block_rows=100)
    assert stitcher._blend is None  # no accumulators at all
    (window,) = plan.windows
    canvas = np.zeros((1, S, S), np.float32)
    # A logit ramp down the canvas: the source rows must come back as its linear interpolation,
    # held at the end values beyond the outermost canvas centres (the official bilinear rule).
    canvas[0, window.dst_slices[0], :] = np.linspace(-2.0, 2.0, window.dst_height)[:, None]
    valid = np.zeros((S, S), bool)
    valid[window.dst_slices] = True
    blocks = list(stitcher.add(window, canvas, valid)) + list(stitcher.finish())
    assert [b.row_off for b in blocks] == list(range(0, 5000, 100))
    column = np.concatenate([b.probabilities[0, :, 45] for b in blocks])
    canvas_row = np.clip((np.arange(5000) + 0.5) * (window.dst_height / 5000) - 0.5, 0, window.dst_height - 1)
    expected_logit = -2.0 + 4.0 * canvas_row / (window.dst_height - 1)
    np.testing.assert_allclose(column, 1.0 / (1.0 + np.exp(-expected_logit)), atol=1e-5)


def test_edge_ramps_sum_to_one_across_an_overlap_and_never_reach_zero():
    ramp = edge_ramp(100, 32, at_start=True, at_end=True)
    assert (ramp > 0).all() and ramp.max() == 1.0
    np.testing.assert_allclose(ramp[:32] + ramp[:32][::-1], 1.0, rtol=1e-6)
    assert (edge_ramp(100, 32, at_start=False, at_end=False) == 1).all()  # scene borders keep full weight
    np.testing.assert_array_equal(edge_ramp(100, 32, False, True)[:68], 1.0)


@pytest.mark.parametrize("shape,size", [((2, 64, 64), (100, 37)), ((1, 50, 40), (50, 40)), ((1, 333, 666), (1800, 3600)),
                                        ((3, 64, 64), (41, 150)), ((1, 7, 1), (3, 5))])
def test_logits_come_back_as_torch_bilinear_interpolation_computes_them(shape, size):
    """The official original-size rule, F.interpolate(bilinear, align_corners=False), enlarging and shrinking."""
    import torch

    logits = np.random.default_rng(3).normal(0, 4, shape).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear",
                                               align_corners=False)[0].numpy()
    mapped = logits_to_footprint(logits, *size)
    assert mapped.shape == expected.shape and mapped.dtype == np.float32
    # torch releases round the source coordinates differently: on this noise (neighbouring
    # logits differ by about 5) 2.13 agrees within 1e-5 everywhere, 2.6 within 5.2e-4 when
    # enlarging 333 -> 1800 rows, a thousandth of a pixel.
    np.testing.assert_allclose(mapped, expected, rtol=0, atol=1e-3)
    rows = slice(size[0] // 3, size[0] // 2 + 1)
    np.testing.assert_array_equal(logits_to_footprint(logits, *size, rows=rows), mapped[:, rows])


def test_misuse_is_caught():
    plan = plan_windows(fake_scene(200, 130), mode="tiled", input_size=S)
    ones = np.ones((1, S, S), np.float32), np.ones((S, S), bool)
    stitcher = Stitcher(plan, 1)
    with pytest.raises(ValueError, match="plan order"):
        stitcher.add(plan[1], *ones)
    with pytest.raises(ValueError, match="shape"):
        stitcher.add(plan[0], np.ones((2, S, S), np.float32), ones[1])
    for window in plan.rows[0]:
        pending = stitcher.add(window, *ones)
    with pytest.raises(RuntimeError, match="consume"):
        stitcher.add(plan.rows[1][0], *ones)
    list(pending)
    with pytest.raises(RuntimeError, match="never added"):
        list(stitcher.finish())


def test_sigmoid_is_stable_for_large_logits():
    with np.errstate(all="raise"):
        p = sigmoid(np.array([-1e4, -20.0, 0.0, 20.0, 1e4], np.float32))
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, [0.0, 2.06e-9, 0.5, 1.0, 1.0], rtol=1e-2, atol=1e-12)


def test_row_block_height():
    block = RowBlock(row_off=3, probabilities=np.zeros((1, 5, 7), np.float32), valid=np.zeros((5, 7), bool))
    assert block.height == 5


def test_stand_in_and_model_segmenters_follow_the_protocol():
    import torch

    from segearth_cli.segmenter import ConstantSegmenter, ModelSegmenter, PixelFunctionSegmenter, Segmenter

    windows = np.zeros((2, 3, 8, 8), np.uint8)
    windows[1] = 200
    constant = ConstantSegmenter(-2.0, input_size=8)
    out = constant.segment(windows, ["a", "b", "c"])
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.float32 and (out == -2.0).all()
    pixel = PixelFunctionSegmenter(lambda w: w[:, 0].astype(np.float32) / 100.0, input_size=8)
    out = pixel.segment(windows, ["a", "b"])
    assert out.shape == (2, 2, 8, 8) and (out[1] == 2.0).all() and (out[0] == 0.0).all()

    class FakePredictor:
        name, input_size, device = "fake/model", 8, torch.device("cpu")

        def predict(self, images, questions):
            assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
            mean = images.float().mean(dim=1, keepdim=True)
            return (mean / 255.0).repeat(1, len(questions), 1, 1).to(torch.bfloat16)

    model = ModelSegmenter(FakePredictor())
    out = model.segment(windows, ["a", "b"])
    assert (model.name, model.input_size) == ("fake/model", 8)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 2, 8, 8)
    assert out[1].min() == pytest.approx(200 / 255, abs=1e-2)
    for segmenter in (constant, pixel, model):
        assert isinstance(segmenter, Segmenter)
