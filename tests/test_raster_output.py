"""The mask GeoTIFF: values, nodata, the scene's grid, probability bands, tags and COG layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

import segearth_cli
from cog_layout import cog_layout_problems
from segearth_cli.outputs.raster import (
    NODATA,
    MaskRasterSink,
    overview_factors,
)
from segearth_cli.scene import Scene
from segearth_cli.stitch import RowBlock

TRANSFORMS = {
    "north-up": Affine(10.0, 0, 500000, 0, -10.0, 4000000),
    "south-up": Affine(10.0, 0, 500000, 0, 10.0, 3990000),
    "rotated": Affine.translation(500000, 4000000) @ Affine.rotation(25) @ Affine.scale(10, -10),
}


def make_scene(width, height, transform=TRANSFORMS["north-up"], crs="EPSG:32631", georeferencing="transform"):
    return Scene(
        path=Path("scene.tif"), width=width, height=height, count=3, dtype="uint8",
        crs=CRS.from_user_input(crs) if crs else None, transform=transform, georeferencing=georeferencing,
        warped=False, bands=(1, 2, 3), colour="rgb", stretch=None, nodata=None, validity="none",
    )


def answer(width, height, questions=2, seed=0):
    """Smooth probabilities (M, H, W) and a validity mask with an invalid corner and column."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for m in range(questions):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        planes.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.3 * max(width, height)) ** 2)))
    probability = np.stack(planes).astype(np.float32)
    valid = np.ones((height, width), dtype=bool)
    valid[: height // 5, : width // 4] = False
    valid[:, -3:] = False
    return probability, valid


def stream(sink, probability, valid, heights=(37, 300, 1, 512, 600)):
    row, turn = 0, 0
    height = valid.shape[0]
    while row < height:
        rows = min(heights[turn % len(heights)], height - row)
        sink.write(RowBlock(row, probability[:, row : row + rows], valid[row : row + rows]))
        row += rows
        turn += 1
    sink.close()


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
def test_mask_on_the_scene_grid(tmp_path, kind, cog):
    width, height = 700, 1100
    scene = make_scene(width, height, TRANSFORMS[kind])
    probability, valid = answer(width, height)
    path = tmp_path / "mask.tif"
    stream(MaskRasterSink(path, scene, ["q0", "q1"], threshold=0.5, cog=cog), probability, valid)
    with rasterio.open(path) as src:
        assert (src.width, src.height, src.count) == (width, height, 2)
        assert src.crs == scene.crs
        assert src.transform.almost_equals(scene.transform, precision=1e-9)
        assert src.nodata == NODATA and src.dtypes == ("uint8", "uint8")
        assert src.block_shapes == [(512, 512)] * 2
        assert src.compression.name.lower() == "deflate"
        assert src.descriptions == ("q0", "q1")
        data = src.read()
    assert set(np.unique(data).tolist()) <= {0, 1, 255}
    expected = np.where(valid, (probability > 0.5).astype(np.uint8), NODATA)
    assert np.array_equal(data, expected)


def test_probability_bands_tags_and_selection(tmp_path):
    width, height = 300, 260
    probability, valid = answer(width, height, questions=3)
    path = tmp_path / "mask.tif"
    sink = MaskRasterSink(path, make_scene(width, height), ["a?", "b?", "c?"], question_indexes=[2, 0],
                          threshold=0.3, probabilities=True, model="tiny-random",
                          tags={"segearth_inputs": {"scene": "scene.tif"}, "note": "cron"})
    stream(sink, probability, valid, heights=(17,))
    with rasterio.open(path) as src:
        assert src.count == 4
        assert src.descriptions == ("c?", "a?", "probability: c?", "probability: a?")
        assert [src.tags(b)["kind"] for b in (1, 2, 3, 4)] == ["mask", "mask", "probability", "probability"]
        assert src.scales[2] == pytest.approx(1 / 254)
        tags = src.tags()
        assert json.loads(tags["questions"]) == ["c?", "a?"]
        assert tags["model"] == "tiny-random" and float(tags["threshold"]) == 0.3
        assert tags["segearth_version"] == segearth_cli.__version__
        assert json.loads(tags["segearth_inputs"]) == {"scene": "scene.tif"} and tags["note"] == "cron"
        data = src.read()
    for band, plane in ((0, 2), (1, 0)):
        assert np.array_equal(data[band], np.where(valid, (probability[plane] > 0.3).astype(np.uint8), 255))
        scaled = data[band + 2]
        assert (scaled[~valid] == 255).all() and scaled[valid].max() <= 254
        assert np.abs(scaled[valid] / 254.0 - probability[plane][valid]).max() <= 0.5 / 254 + 1e-6


def test_cog_is_valid_with_overviews_per_band_resampling(tmp_path):
    width, height = 1500, 1300
    probability, valid = answer(width, height, questions=1)
    # Columns alternating 0.2 / 0.8: an average overview gives 0.5, nearest (or cubic) does not.
    probability[0, 400:800, 400:800] = np.where(np.arange(400) % 2 == 0, 0.2, 0.8)[None, :]
    path = tmp_path / "mask.tif"
    stream(MaskRasterSink(path, make_scene(width, height), ["q"], probabilities=True, cog=True, model="m"),
           probability, valid)
    assert cog_layout_problems(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]  # staging files are gone
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        assert layout in (None, "COG")  # GDAL >= 3.1 reports it
        assert src.overviews(1) == src.overviews(2) == overview_factors(width, height) == [2, 4]
        assert src.block_shapes == [(512, 512)] * 2
        assert src.descriptions == ("q", "probability: q") and src.tags()["model"] == "m"
        assert src.tags(2)["kind"] == "probability"
    with rasterio.open(path, overview_level=0) as level:
        mask_overview, probability_overview = level.read()
    assert set(np.unique(mask_overview).tolist()) <= {0, 1, 255}
    stripes_mask = mask_overview[210:390, 210:390]
    assert set(np.unique(stripes_mask).tolist()) <= {0, 1} and stripes_mask.std() == 0  # one column phase
    expected = (round(0.2 * 254) + round(0.8 * 254)) / 2
    assert np.abs(probability_overview[210:390, 210:390].astype(float) - expected).max() <= 1.0


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_layout_check_rejects_files_that_are_not_cogs(tmp_path):
    data = np.zeros((1, 1200, 1200), dtype=np.uint8)
    striped = tmp_path / "striped.tif"
    with rasterio.open(striped, "w", driver="GTiff", width=1200, height=1200, count=1, dtype="uint8") as dst:
        dst.write(data)
    assert any("not tiled" in p for p in cog_layout_problems(striped))

    late = tmp_path / "late.tif"  # tiled, but overviews added afterwards: their IFDs follow the data
    with rasterio.open(late, "w", driver="GTiff", width=1200, height=1200, count=1, dtype="uint8",
                       tiled=True, blockxsize=512, blockysize=512) as dst:
        dst.write(data)
    assert any("no overviews" in p for p in cog_layout_problems(late))
    with rasterio.open(late, "r+") as dst:
        dst.build_overviews([2, 4], rasterio.enums.Resampling.nearest)
    assert any("IFD" in p for p in cog_layout_problems(late))

    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    assert cog_layout_problems(empty) == ["not a TIFF file"]


def test_scene_without_georeferencing_gives_a_bare_pixel_grid(tmp_path):
    scene = make_scene(40, 30, transform=Affine.identity(), crs=None, georeferencing="none")
    probability, valid = answer(40, 30, questions=1)
    path = tmp_path / "mask.tif"
    stream(MaskRasterSink(path, scene, ["q"]), probability, valid)
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(path) as src:
        assert src.crs is None and src.transform.is_identity
        assert src.read(1).shape == (30, 40)


def test_rows_must_arrive_in_order_and_abort_removes_the_file(tmp_path):
    scene = make_scene(50, 50)
    probability, valid = answer(50, 50, questions=1)
    path = tmp_path / "mask.tif"
    sink = MaskRasterSink(path, scene, ["q"], cog=True)
    sink.write(RowBlock(0, probability[:, :10], valid[:10]))
    with pytest.raises(ValueError):
        sink.write(RowBlock(20, probability[:, 20:30], valid[20:30]))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_overview_factors_stop_when_one_tile_holds_the_image():
    assert overview_factors(512, 300) == []
    assert overview_factors(513, 10) == [2]
    assert overview_factors(36000, 18000) == [2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("width", [700, 9000])
def test_read_back_finds_a_block_cut_off_the_end_of_the_file(tmp_path, width):
    from segearth_cli.outputs.raster import _read_back

    path = tmp_path / "cut.tif"
    # Incompressible noise, so the last block's bytes are the end of the file.
    pixels = np.random.default_rng(5).integers(0, 256, (1, 1100, width), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=1100, count=1, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", crs="EPSG:32633",
                       transform=Affine(1, 0, 500000, 0, -1, 5000000)) as dst:
        dst.write(pixels)
    _read_back(path)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 2000)
    with pytest.raises(rasterio.errors.RasterioError):
        _read_back(path)
