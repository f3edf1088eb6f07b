"""Exact geometry: the stitched answer equals a known function of map coordinates.

Each scene's pixel values are computed from the map coordinates of the pixel centre
(through the scene's transform). A stand-in segmenter turns pixel values into logits, so
the right answer at every output pixel can be computed straight from the transform, with
no window, resampling or blending involved. Any window placed one pixel off, any flipped
or transposed axis, or a blend that leaks padding shows up as a mismatch.
"""

from __future__ import annotations


import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from segearth_cli.executor import run_plan
from segearth_cli.scene import open_scene
from segearth_cli.segmenter import PixelFunctionSegmenter
from sequential_run import stream_row_blocks

from segearth_cli.stitch import Stitcher
from segearth_cli.windows import plan_windows

#: Resampled windows: two uint8 roundings on the way (scene, resampled window) stay inside it.
TOLERANCE = 1.0 / 254.0
#: Native-resolution windows change no pixel value: only float32 rounding in the blend is left.
EXACT = 1e-6
SIZE = 64  # model input side; small so multi-window scenes stay small


def centre_coordinates(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    a, b, c, d, e, f = tuple(transform)[:6]
    return a * cols + b * rows + c, d * cols + e * rows + f


# -- a rough encoding: a hash of the map coordinates, different at every pixel ------------


def hashed_channels(x: np.ndarray, y: np.ndarray, pixel: float) -> np.ndarray:
    """Three uint8 planes in 1..255 that look random from one pixel to the next."""
    xi = np.round(x / pixel * 4).astype(np.int64)
    yi = np.round(y / pixel * 4).astype(np.int64)
    out = []
    for k, (p, q) in enumerate([(73856093, 19349663), (83492791, 2654435761), (2246822519, 3266489917)]):
        h = (xi * p) ^ (yi * q) ^ (k * 97531)
        h = (h ^ (h >> 13)) * 1274126177
        out.append((1 + (h >> 7) % 255).astype(np.uint8))
    return np.stack(out)


def hashed_probability(rgb: np.ndarray) -> np.ndarray:
    """A probability in (0, 1) from the channels at axis -3 (a scene (3,H,W) or windows (B,3,S,S))."""
    r, g, b = (rgb[..., k, :, :].astype(np.int64) for k in range(3))
    return (1 + (3 * r + 5 * g + 7 * b) % 253) / 255.0


def hashed_logits(windows: np.ndarray) -> np.ndarray:
    p = hashed_probability(windows)
    return np.log(p / (1.0 - p))


# -- a smooth encoding: resampling errors stay far below the tolerance --------------------


def smooth_channels(x: np.ndarray, y: np.ndarray, pixel: float, period_px: float = 180.0) -> np.ndarray:
    u, v = x / pixel, y / pixel
    r = 128 + 90 * np.sin(2 * np.pi * u / period_px) * np.cos(2 * np.pi * v / (1.3 * period_px))
    g = 128 + 90 * np.cos(2 * np.pi * (u + v) / (1.7 * period_px))
    b = 128 + 60 * np.sin(2 * np.pi * (u - 0.5 * v) / (1.1 * period_px))
    return np.rint(np.stack([r, g, b])).astype(np.uint8)


def smooth_probability(red: np.ndarray) -> np.ndarray:
    """Linear in the red value: interpolating pixels interpolates probabilities.

    The slope keeps the two uint8 roundings on the way (scene, resampled window), up to
    1.5 grey levels together, inside the tolerance; what is left measures the geometry.
    """
    return 0.25 + 0.5 * np.asarray(red, dtype=np.float64) / 255.0


def smooth_logits(windows: np.ndarray) -> np.ndarray:
    p = smooth_probability(windows[:, 0])
    return np.log(p / (1.0 - p))


# -- driving the pipeline core ------------------------------------------------------------


def run_core(path, segmenter, pipelined=False, **plan_options):
    """(stitched probability (H, W), valid (H, W), plan, scene) for one question.

    ``pipelined``: through the threaded executor (three readers) instead of the sequential loop.
    """
    with open_scene(path) as reader:
        scene = reader.scene
        plan = plan_windows(scene, input_size=segmenter.input_size, **plan_options)
        probability = np.full((scene.height, scene.width), np.nan, dtype=np.float32)
        valid = np.zeros((scene.height, scene.width), dtype=bool)
        seen = np.zeros(scene.height, dtype=int)

        def take(block) -> None:
            rows = slice(block.row_off, block.row_off + block.height)
            probability[rows] = block.probabilities[0]
            valid[rows] = block.valid
            seen[rows] += 1

        if pipelined:
            run_plan(reader, plan, segmenter, ["q"], take, batch_size=3, workers=3)
        else:
            for block in stream_row_blocks(reader, plan, segmenter, ["q"], batch_size=3):
                take(block)
        assert (seen == 1).all(), "every row must be released exactly once"
        return probability, valid, plan, scene


GRIDS = {
    "north-up projected": (Affine(0.5, 0, 440_000, 0, -0.5, 4_300_000), CRS.from_epsg(32618)),
    "rotated": (Affine.translation(500_000, 6_000_000) @ Affine.rotation(27.0) @ Affine.scale(2.0, -2.0),
                CRS.from_epsg(32633)),
    "south-up": (Affine(10.0, 0, 300_000, 0, 10.0, 5_000_000), CRS.from_epsg(32631)),
    "geographic": (Affine(0.0001, 0, 12.3, 0, -0.0001, 45.8), CRS.from_epsg(4326)),
}


def write_encoded(write_geotiff, name, width, height, grid, encode, nodata_box=None):
    transform, crs = GRIDS[grid]
    x, y = centre_coordinates(transform, width, height)
    pixel = abs(transform.a) if transform.b == 0 else np.hypot(transform.a, transform.d)
    data = encode(x, y, pixel)
    profile = dict(transform=transform, crs=crs)
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
        profile["nodata"] = 0
    return write_geotiff(name, data, **profile), transform, crs, pixel


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize(
    "width,height,overlap",
    [(300, 230, 0.25), (250, 170, 0.0), (211, 97, 0.5), (45, 150, 0.125), (140, 180, 0.75)],
)
def test_native_resolution_tiles_reproduce_the_function_exactly(write_geotiff, grid, width, height, overlap):
    path, transform, crs, pixel = write_encoded(
        write_geotiff, "scene.tif", width, height, grid, hashed_channels, nodata_box=(20, 31, 7, 40)
    )
    segmenter = PixelFunctionSegmenter(hashed_logits, input_size=SIZE)
    probability, valid, plan, scene = run_core(path, segmenter, mode="tiled", overlap=overlap)

    assert plan.mode == "tiled" and len(plan) > 1
    assert scene.transform == transform and scene.crs == crs
    x, y = centre_coordinates(scene.transform, scene.width, scene.height)
    expected = hashed_probability(hashed_channels(x, y, pixel))
    expected_valid = np.ones_like(valid)
    expected_valid[20:31, 7:40] = False
    np.testing.assert_array_equal(valid, expected_valid)
    assert np.abs(probability[valid] - expected[valid]).max() <= EXACT
    assert (probability[~valid] == 0).all()


def test_the_pipelined_run_gives_the_sequential_answer(write_geotiff):
    path, *_ = write_encoded(write_geotiff, "ahead.tif", 260, 200, "rotated", hashed_channels, nodata_box=(0, 70, 0, 70))
    segmenter = PixelFunctionSegmenter(hashed_logits, input_size=SIZE)
    serial = run_core(path, segmenter, mode="tiled", overlap=0.25)
    ahead = run_core(path, segmenter, pipelined=True, mode="tiled", overlap=0.25)
    np.testing.assert_array_equal(serial[0], ahead[0])
    np.testing.assert_array_equal(serial[1], ahead[1])


def test_partial_edge_windows_are_padded_not_stretched(write_geotiff):
    # 50 rows < 64 px footprint: one padded window per column, centred on the canvas.
    path, *_ , pixel = write_encoded(write_geotiff, "strip.tif", 170, 50, "north-up projected", hashed_channels)
    segmenter = PixelFunctionSegmenter(hashed_logits, input_size=SIZE)
    probability, valid, plan, scene = run_core(path, segmenter, mode="tiled", overlap=0.25)
    assert {w.height for w in plan} == {50} and {w.dst_height for w in plan} == {50}
    assert all(w.dst_row_off == (SIZE - 50) // 2 for w in plan)
    x, y = centre_coordinates(scene.transform, scene.width, scene.height)
    expected = hashed_probability(hashed_channels(x, y, pixel))
    assert valid.all()
    assert np.abs(probability - expected).max() <= EXACT


@pytest.mark.parametrize("grid", ["rotated", "south-up", "geographic"])
@pytest.mark.parametrize("window", [100, 41])  # shrunk (scale 0.64) and enlarged (scale 1.56) windows
def test_resampled_tiles_reproduce_a_smooth_function(write_geotiff, grid, window):
    path, transform, crs, pixel = write_encoded(write_geotiff, "smooth.tif", 330, 250, grid, smooth_channels)
    segmenter = PixelFunctionSegmenter(smooth_logits, input_size=SIZE)
    probability, valid, plan, scene = run_core(path, segmenter, mode="tiled", window=window, overlap=0.25)
    assert len(plan) > 4 and not plan[0].native
    x, y = centre_coordinates(scene.transform, scene.width, scene.height)
    expected = smooth_probability(smooth_channels(x, y, pixel)[0])
    assert valid.all()
    assert np.abs(probability - expected).max() <= TOLERANCE


def test_whole_mode_reproduces_a_smooth_function(write_geotiff):
    path, transform, crs, pixel = write_encoded(write_geotiff, "whole.tif", 150, 97, "north-up projected",
                                                lambda x, y, p: smooth_channels(x, y, p, period_px=120.0))
    segmenter = PixelFunctionSegmenter(smooth_logits, input_size=SIZE)
    probability, valid, plan, scene = run_core(path, segmenter, mode="whole")
    (window,) = plan.windows
    assert (window.dst_width, window.dst_height) == (64, int(97 * 64 / 150))
    x, y = centre_coordinates(scene.transform, scene.width, scene.height)
    expected = smooth_probability(smooth_channels(x, y, pixel, period_px=120.0)[0])
    assert valid.all()
    # Shrinking 2.3x and back loses detail; the tolerance is looser than for tiles.
    assert np.abs(probability - expected).max() <= 0.02
    assert np.abs(probability - expected).mean() <= TOLERANCE


def test_blend_weights_hide_a_disagreement_between_windows(write_geotiff):
    """Windows that disagree by a constant meet without a step: the blend is continuous."""
    path, *_ = write_encoded(write_geotiff, "seam.tif", 200, 64, "north-up projected", smooth_channels)
    with open_scene(path) as reader:
        plan = plan_windows(reader.scene, mode="tiled", input_size=SIZE, overlap=0.5)
        stitcher = Stitcher(plan, 1)
        rows = []
        for index, window in enumerate(plan):
            _, valid = reader.read(window)
            probability = 0.2 if index % 2 == 0 else 0.8
            logit = np.log(probability / (1.0 - probability))
            rows.extend(stitcher.add(window, np.full((1, SIZE, SIZE), logit, np.float32), valid))
        rows.extend(stitcher.finish())
    line = np.concatenate([b.probabilities[0] for b in rows])[32]
    steps = np.abs(np.diff(line))
    # 0.6 between the windows, spread over a 32-px raised-cosine ramp: no step near 0.6.
    assert line.min() == pytest.approx(0.2) and line.max() == pytest.approx(0.8)
    assert steps.max() < 0.6 * np.pi / 32 * 0.6


def test_windows_without_valid_pixels_are_skipped_and_the_rest_is_still_exact(write_geotiff):
    path, transform, crs, pixel = write_encoded(
        write_geotiff, "holes.tif", 300, 230, "north-up projected", hashed_channels, nodata_box=(0, 130, 0, 170)
    )
    calls = []

    def logits(windows):
        calls.append(windows.shape[0])
        return hashed_logits(windows)

    segmenter = PixelFunctionSegmenter(logits, input_size=SIZE)
    with open_scene(path) as reader:
        plan = plan_windows(reader.scene, mode="tiled", input_size=SIZE, overlap=0.25)
        ran = []
        blocks = list(stream_row_blocks(reader, plan, segmenter, ["q"], batch_size=4,
                                        on_window=lambda w, has_valid: ran.append(has_valid)))
    skipped = ran.count(False)
    assert skipped >= 4 and sum(calls) == len(plan) - skipped and max(calls) <= 4
    probability = np.concatenate([b.probabilities[0] for b in blocks])
    valid = np.concatenate([b.valid for b in blocks])
    x, y = centre_coordinates(transform, 300, 230)
    expected = hashed_probability(hashed_channels(x, y, pixel))
    assert not valid[:130, :170].any() and valid[130:].all() and valid[:, 170:].all()
    assert np.abs(probability[valid] - expected[valid]).max() <= EXACT


@pytest.mark.parametrize("name,input_size", [
    ("rasterio__RGB.byte.tif", 128),
    ("rio-tiler__pix4d_alpha_nodata.tif", 128),
    ("georust-gdal__m_3607824_se_17_1_20160620_sub.tif", 128),
    ("gdalraster__geomatrix.tif", 16),  # 20 x 20 px, rotated
    ("rio-tiler__201404_13SED190110_201404_0x1500m_CL_1_extmask.tif", 128),
])
def test_real_scenes_come_back_pixel_for_pixel_through_tiles(real_scenes_dir, name, input_size):
    """A stand-in answering with each pixel's red value returns the file's red band, masked as the file is."""
    import rasterio

    def red_logits(windows):
        p = (windows[:, 0].astype(np.float64) + 0.5) / 256.0
        return np.log(p / (1.0 - p))

    segmenter = PixelFunctionSegmenter(red_logits, input_size=input_size)
    path = real_scenes_dir / name
    probability, valid, plan, scene = run_core(path, segmenter, mode="tiled", overlap=0.25)
    with rasterio.open(path) as src:
        red_band = scene.bands[0]
        expected = (src.read(red_band).astype(np.float64) + 0.5) / 256.0
        expected_valid = src.dataset_mask() > 0
    assert len(plan) > 1
    np.testing.assert_array_equal(valid, expected_valid)
    assert np.abs(probability[valid] - expected[valid]).max() <= EXACT
