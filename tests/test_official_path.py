"""`query`, `batch` and `eval` show the model what the official code showed it, and read its answer the same way.

* The canvas of a whole-mode window is ``resize_and_pad`` of the scene's full-resolution
  RGB, bit for bit; a tiled window's is ``cv2.resize`` (``INTER_LINEAR``) of its footprint.
* The conformance fixture's raw image, written as a GeoTIFF and queried in whole mode with
  the fixture model and official numerics, gives the official answer at the image's size.
* ``query --mode whole`` and ``eval``'s original-size prediction are the same mask.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import rasterio.errors
import torch
from affine import Affine
from rasterio.crs import CRS

from segearth_cli import scene as scene_module
from segearth_cli.evaluate import Sample, evaluate
from segearth_cli.query import OutputTarget, QueryOptions, run_query
from segearth_cli.scene import open_scene
from segearth_cli.segmenter import ModelSegmenter, load_segmenter, resize_and_pad
from segearth_cli.windows import Window, plan_windows

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Scenes whose footprint the reader takes at full resolution (64 Mpx and less).
EXACT_LIMIT = 64_000_000
#: Files in ../shared/real_scenes that cannot be read at all (their refusal is tested elsewhere).
UNREADABLE = {"rasterio__corrupt.tif", "pygaarst__test.tiff", "gdalraster__complex.tif"}

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def scenes() -> list[Path]:
    """Sample and real scenes of at most 64 Mpx; larger ones are read reduced, approximate by design."""
    found = sorted((REPO / "sample_scenes").glob("*.tif"))
    folder = SHARED / "real_scenes"
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir()
                        if p.suffix in (".tif", ".tiff") and p.name not in UNREADABLE)
    return [p for p in found if _pixels(p) <= EXACT_LIMIT]


def _pixels(path: Path) -> int:
    # Runs while collecting, where the module's warning filter does not apply yet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.width * src.height


def native_pixels(reader) -> tuple[np.ndarray, np.ndarray]:
    """The scene's full-resolution uint8 RGB (3, H, W) and validity: a canvas read with no resize."""
    width, height = reader.scene.width, reader.scene.height
    window = Window(0, 0, width, height, 1.0, max(width, height), 0, 0, width, height)
    rgb, valid = reader.read(window)
    return rgb[:, :height, :width], valid[:height, :width]


@pytest.mark.parametrize("path", scenes(), ids=lambda p: p.name)
def test_whole_mode_canvas_is_the_official_resize_of_the_full_resolution_image(path):
    with open_scene(path) as reader:
        rgb, valid = native_pixels(reader)
        (window,) = plan_windows(reader.scene, mode="whole", input_size=1024)
        canvas, canvas_valid = reader.read(window)
    official, info = resize_and_pad(np.ascontiguousarray(rgb.transpose(1, 2, 0)), 1024)
    assert (window.dst_row_off, window.dst_col_off, window.dst_height, window.dst_width) == (
        info.top, info.left, info.new_h, info.new_w)
    np.testing.assert_array_equal(canvas, official.transpose(2, 0, 1))
    expected_valid = np.zeros((1024, 1024), dtype=bool)
    expected_valid[window.dst_slices] = cv2.resize(valid.astype(np.uint8), (info.new_w, info.new_h),
                                                   interpolation=cv2.INTER_NEAREST) > 0
    np.testing.assert_array_equal(canvas_valid, expected_valid)


@pytest.mark.parametrize("path", scenes(), ids=lambda p: p.name)
def test_tiled_canvases_are_cv2_resizes_of_the_native_footprint(path):
    with open_scene(path) as reader:
        rgb, valid = native_pixels(reader)
        # Footprints of two thirds of the short side, shown at 96 px: shrunk, enlarged and padded windows.
        footprint = max(16, min(reader.scene.width, reader.scene.height) * 2 // 3)
        plan = plan_windows(reader.scene, mode="tiled", input_size=96, window=footprint, overlap=0.25)
        for window in plan:
            canvas, canvas_valid = reader.read(window)
            source = np.ascontiguousarray(rgb[(slice(None), *window.src_slices)].transpose(1, 2, 0))
            size = (window.dst_width, window.dst_height)
            expected = np.zeros_like(canvas)
            expected[(slice(None), *window.dst_slices)] = cv2.resize(
                source, size, interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
            np.testing.assert_array_equal(canvas, expected, err_msg=str(window))
            expected_valid = np.zeros_like(canvas_valid)
            expected_valid[window.dst_slices] = cv2.resize(
                valid[window.src_slices].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            np.testing.assert_array_equal(canvas_valid, expected_valid, err_msg=str(window))


def test_a_footprint_beyond_the_exact_limit_is_read_reduced_then_resized(write_geotiff, monkeypatch):
    """Past the limit the read is twice the destination size, and the canvas stays close to the exact one."""
    y, x = np.mgrid[0:600, 0:900]
    data = np.stack([128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0), 128 + 90 * np.cos((x + y) / 41.0),
                     128 + 60 * np.sin((x - y) / 17.0)]).round().astype(np.uint8)
    path = write_geotiff("large.tif", data, crs=CRS.from_epsg(32633), transform=Affine(1, 0, 0, 0, -1, 0))
    with open_scene(path) as reader:
        (window,) = plan_windows(reader.scene, mode="whole", input_size=128)
        exact, _ = reader.read(window)
        monkeypatch.setattr(scene_module, "EXACT_READ_MAX_PIXELS", 900 * 600 - 1)
        assert scene_module.footprint_read_size(window) == (2 * window.dst_width, 2 * window.dst_height)
        reduced, valid = reader.read(window)
    assert valid[window.dst_slices].all() and not valid.sum() > window.dst_width * window.dst_height
    difference = np.abs(exact.astype(int) - reduced.astype(int))
    assert difference.max() <= 12 and difference.mean() <= 1.0


# -- the fixture's image through the whole query path ----------------------------------------


def _fixture(name: str) -> dict:
    path = SHARED / "conformance" / name
    if not path.is_file():
        pytest.skip(f"../shared/conformance/{name} not present")
    from safetensors.torch import load_file

    return load_file(str(path))


class _RecordingSegmenter:
    """Passes calls through and keeps the canvases the pipeline handed over."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.name, self.input_size, self.identity = segmenter.name, segmenter.input_size, segmenter.identity
        self.canvases: list[np.ndarray] = []

    def segment(self, windows, questions):
        self.canvases.append(np.array(windows))
        return self.segmenter.segment(windows, questions)

    def segment_pairs(self, windows, questions):
        self.canvases.append(np.array(windows))
        return self.segmenter.segment_pairs(windows, questions)


def test_the_fixture_image_queried_in_whole_mode_gives_the_official_mask(write_geotiff, tmp_path):
    tokenizer_dir = SHARED / "conformance" / "phi15_tokenizer"
    if not tokenizer_dir.is_dir():
        pytest.skip("../shared/conformance/phi15_tokenizer not present")
    from test_model_parity import FIXTURE_QUESTION, _TinyVocabularyTokenizer
    from transformers import AutoTokenizer

    from segearth_model.config import SegEarthR1Config
    from segearth_model.predictor import MaskPredictor
    from segearth_model.segearth_r1 import SegEarthR1
    from segearth_model.state_dict import convert_checkpoint_state_dict

    inputs, outputs = _fixture("tiny_inputs.safetensors"), _fixture("tiny_outputs.safetensors")
    config = SegEarthR1Config.tiny()
    network = SegEarthR1(config).eval().requires_grad_(False)
    network.load_state_dict(convert_checkpoint_state_dict(_fixture("tiny_weights.safetensors"), config), strict=True)
    network.official_numerics = True
    tokenizer = _TinyVocabularyTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    segmenter = _RecordingSegmenter(ModelSegmenter(MaskPredictor(network, tokenizer, task="reasoning")))

    raw = inputs["raw_image_rgb_uint8"].numpy()  # (200, 300, 3)
    scene = write_geotiff("fixture.tif", raw.transpose(2, 0, 1), crs=CRS.from_epsg(32633),
                          transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000))
    answer = tmp_path / "answer.tif"
    run_query(scene, [FIXTURE_QUESTION], [OutputTarget.for_path(answer)], segmenter, QueryOptions(mode="whole"))

    (canvas,) = segmenter.canvases
    np.testing.assert_array_equal(canvas[0], inputs["preprocessed_image_chw_uint8"].numpy())
    # The official deployment rule: the image area of the upsampled logits, resized back
    # bilinearly (align_corners=False) to the image's size, thresholded at 0.
    logits = outputs["final.mask_logits_upsampled"]  # (1, 256, 256); the image sits in rows 43..212
    crop = logits[:, 43:43 + 170, :]
    official = torch.nn.functional.interpolate(crop[None], size=raw.shape[:2], mode="bilinear",
                                               align_corners=False)[0, 0].numpy() > 0
    with rasterio.open(answer) as mask_file:
        mask = mask_file.read(1)
    assert official.any() and not official.all()
    assert int(((mask == 1) != official).sum()) == 0


# -- query and eval agree ---------------------------------------------------------------------


class _ArrayTarget:
    def __init__(self, array: np.ndarray):
        self.array = array

    def load(self) -> np.ndarray:
        return self.array


@pytest.mark.parametrize("width,height", [(300, 200), (97, 161), (1030, 700)])
def test_query_whole_mode_and_eval_original_size_give_the_same_mask(write_geotiff, tmp_path, width, height):
    rng = np.random.default_rng(width)
    small = rng.integers(0, 256, size=(3, height // 8 + 2, width // 8 + 2), dtype=np.uint8)
    rgb = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in small])
    scene = write_geotiff("scene.tif", rgb, crs=CRS.from_epsg(32633), transform=Affine(1, 0, 0, 0, -1, 0))
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.ascontiguousarray(rgb.transpose(1, 2, 0)[:, :, ::-1]))

    segmenter = load_segmenter("tiny-random", revision=None, device="cpu", dtype="float32", task="auto", quiet=True)
    answer = tmp_path / "answer.tif"
    question = "where are the roofs?"
    run_query(scene, [question], [OutputTarget.for_path(answer)], segmenter, QueryOptions(mode="whole"))
    with rasterio.open(answer) as mask_file:
        query_mask = mask_file.read(1) == 1
    assert query_mask.any() and not query_mask.all()

    # Scored against the query's own mask, eval's original-size prediction must match it exactly.
    report = evaluate([Sample("scene", image, question, _ArrayTarget(query_mask))], segmenter)
    (result,) = report.samples
    intersection, union, _ = result.original_size
    assert intersection == union == int(query_mask.sum())
