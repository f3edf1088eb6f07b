"""run_query end to end with a stand-in segmenter whose answer is known at every pixel.

Each scene's red channel encodes a logit computed from the map coordinates of the pixel
centre; the stand-in turns red back into that logit. So the right probability at every
output pixel, and the right answer area, follow from the scene array and its transform
alone, with no window, blend or polygon involved. Windows are at the file's own resolution
(or resampled, for a smooth function), several per scene, overlapping, with edge windows
smaller than the footprint.
"""

from __future__ import annotations

import math

import geopandas
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS

from segearth_cli.errors import InputError, OutputError, UsageError
from segearth_cli.query import OutputTarget, QueryOptions, run_query, validate_query
from segearth_cli.segmenter import PixelFunctionSegmenter

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

INPUT = 64  # model input side: small, so small scenes need many windows
LOGIT_STEP = 12.0  # red = 128 + LOGIT_STEP * logit
PROBABILITY_TOLERANCE = 1.0 / 254.0


def red_to_logit(red: np.ndarray) -> np.ndarray:
    return (red.astype(np.float64) - 128.0) / LOGIT_STEP


def stand_in(input_size: int = INPUT) -> PixelFunctionSegmenter:
    return PixelFunctionSegmenter(lambda windows: red_to_logit(windows[:, 0]), input_size=input_size, name="oracle")


class NeverCalled:
    name = "never-called"
    input_size = INPUT

    def segment(self, windows, questions):
        raise AssertionError("the segmenter must not be called")


def pixel_centres(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    a, b, c, d, e, f = tuple(transform)[:6]
    return a * cols + b * rows + c, d * cols + e * rows + f


def write_oracle_scene(path, transform: Affine, crs, width: int, height: int, centre, radius: float,
                       nodata_columns: int = 0):
    """A scene whose answer is a disc with a hole: logit = distance band around ``radius``."""
    x, y = pixel_centres(transform, width, height)
    if crs is not None and crs.is_geographic:
        # Distances in metres on a local tangent plane, so the disc is round on the ground.
        lat0 = math.radians(centre[1])
        dx = (x - centre[0]) * 111320.0 * math.cos(lat0)
        dy = (y - centre[1]) * 110540.0
    else:
        dx, dy = x - centre[0], y - centre[1]
    distance = np.hypot(dx, dy)
    # Inside a ring between 0.35 R and R (a polygon with a hole), outside elsewhere.
    logit = np.minimum(radius - distance, distance - 0.35 * radius) / (radius * 0.08)
    red = np.clip(np.rint(128 + LOGIT_STEP * logit), 1, 255).astype(np.uint8)
    green = np.full_like(red, 90)
    blue = ((np.arange(width)[None, :] + np.arange(height)[:, None]) % 200 + 20).astype(np.uint8)
    data = np.stack([red, green, blue])
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", transform=transform,
                   tiled=True, blockxsize=64, blockysize=64)
    if crs is not None:
        profile["crs"] = crs
    if nodata_columns:
        profile["nodata"] = 0
        data[:, :, :nodata_columns] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def expected_probability(data: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-red_to_logit(data[0])))


def pixel_areas_m2(transform: Affine, crs, width: int, height: int) -> np.ndarray:
    """Ground area of every pixel, computed from its four corners (no code under test)."""
    if not crs.is_geographic:
        return np.full((height, width), abs(transform.a * transform.e - transform.b * transform.d))
    geod = Geod(ellps="WGS84")
    areas = np.empty((height, width))
    for row in range(height):
        corners = [transform @ (0, row), transform @ (1, row), transform @ (1, row + 1), transform @ (0, row + 1)]
        lons, lats = zip(*corners)
        area, _ = geod.polygon_area_perimeter(lons, lats)
        areas[row, :] = abs(area)  # north-up grid: same area along a row
    return areas


def boundary_pixels(mask: np.ndarray) -> int:
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    neighbours_out = (~padded[:-2, 1:-1]) | (~padded[2:, 1:-1]) | (~padded[1:-1, :-2]) | (~padded[1:-1, 2:])
    return int(np.count_nonzero(inner & neighbours_out))


SCENES = {
    # name: transform, crs, width, height, centre (map units), radius (map metres)
    "north_up_utm": (Affine(2.0, 0, 500000.0, 0, -2.0, 4200000.0), CRS.from_epsg(32633), 190, 150,
                     (500190.0, 4199850.0), 140.0),
    "rotated_utm": (Affine(1.8, 0.6, 300000.0, 0.5, -1.9, 5000000.0), CRS.from_epsg(32631), 170, 160,
                    (300000.0 + 1.8 * 85 + 0.6 * 80, 5000000.0 + 0.5 * 85 - 1.9 * 80), 120.0),
    "south_up_utm": (Affine(3.0, 0, 600000.0, 0, 3.0, 1000000.0), CRS.from_epsg(32618), 150, 200,
                     (600225.0, 1000300.0), 200.0),
    "geographic": (Affine(0.00004, 0, 10.0, 0, -0.00002, 60.0), CRS.from_epsg(4326), 180, 140,
                   (10.0036, 59.9986), 120.0),
    "thin_strip": (Affine(1.0, 0, 400000.0, 0, -1.0, 100000.0), CRS.from_epsg(32632), 300, 40,
                   (400150.0, 99980.0), 19.0),
}


@pytest.mark.parametrize("name", sorted(SCENES))
def test_probability_band_and_polygon_area_match_the_function(tmp_path, name):
    transform, crs, width, height, centre, radius = SCENES[name]
    scene = tmp_path / f"{name}.tif"
    data = write_oracle_scene(scene, transform, crs, width, height, centre, radius)
    targets = [OutputTarget.for_path(tmp_path / f"{name}_answer{ext}") for ext in (".tif", ".gpkg", ".geojson")]
    seen = []
    report = run_query(scene, ["the ring?"], targets, stand_in(),
                       QueryOptions(mode="tiled", overlap=0.25, probabilities=True),
                       progress=lambda done, total: seen.append((done, total)))

    assert report.mode == "tiled"
    assert report.windows_total >= 6 and report.windows_run == report.windows_total
    assert seen[-1] == (report.windows_total, report.windows_total)

    probability = expected_probability(data)
    answer = probability > 0.5
    with rasterio.open(targets[0].path) as out:
        assert (out.width, out.height, out.crs) == (width, height, crs)
        assert out.transform.almost_equals(transform)
        assert out.count == 2 and out.nodata == 255
        mask, scaled = out.read(1), out.read(2)
    assert np.abs(scaled / 254.0 - probability).max() <= PROBABILITY_TOLERANCE
    # Pixels whose probability sits on the threshold may go either way by float rounding.
    decided = np.abs(probability - 0.5) > 1e-6
    assert np.array_equal(mask[decided], answer[decided].astype(np.uint8))

    areas = pixel_areas_m2(transform, crs, width, height)
    expected_area = float(areas[answer].sum())
    tolerance = boundary_pixels(answer) * float(areas.max())
    polygons = geopandas.read_file(targets[1].path)
    assert polygons.crs == crs
    assert list(polygons["question"].unique()) == ["the ring?"]
    assert abs(polygons["area_m2"].sum() - expected_area) <= tolerance
    if not crs.is_geographic:
        # Projected metres: the polygons are the pixel edges, so the area is exact.
        assert polygons.geometry.area.sum() == pytest.approx(expected_area, rel=1e-9)
        assert polygons["area_m2"].sum() == pytest.approx(expected_area, rel=1e-6)
    # The ring is one polygon with a hole, whatever the window borders cutting it.
    assert len(polygons) == 1
    assert len(polygons.geometry.iloc[0].interiors) == 1
    assert report.questions[0].polygons == 1 and report.questions[0].found
    assert report.questions[0].area_m2 == pytest.approx(polygons["area_m2"].sum(), rel=1e-6)
    assert report.questions[0].pixels == int(np.count_nonzero(mask == 1))

    lonlat = geopandas.read_file(targets[2].path)
    assert lonlat.crs.to_epsg() == 4326
    minx, miny, maxx, maxy = lonlat.total_bounds
    assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90


def test_resampled_windows_of_a_smooth_function(tmp_path):
    """Windows of 96 source pixels shrunk to 64 model pixels: a linear answer survives within 1/254.

    Red rises by exactly one per column, so it is linear without rounding; the canvas the
    model sees rounds it by at most half a level again (0.005 in logit, 0.00125 in
    probability), which leaves room for the 0.5/254 of the output scaling.
    """
    transform = Affine(1.0, 0, 0.0, 0, -1.0, 300.0)
    crs = CRS.from_epsg(32633)
    width, height = 240, 230
    x, _ = pixel_centres(transform, width, height)
    red = (8 + (x - 0.5)).astype(np.uint8)
    scene = tmp_path / "smooth.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs=crs, transform=transform) as dst:
        dst.write(np.stack([red, np.full_like(red, 50), np.full_like(red, 50)]))
    out = tmp_path / "smooth_mask.tif"
    gentle = PixelFunctionSegmenter(lambda w: (w[:, 0].astype(np.float64) - 128.0) / 100.0, input_size=INPUT)
    report = run_query(scene, ["q"], [OutputTarget.for_path(out)], gentle,
                       QueryOptions(mode="tiled", window=96, probabilities=True))
    assert report.windows_total >= 9
    with rasterio.open(out) as ds:
        scaled = ds.read(2)
    expected = 1.0 / (1.0 + np.exp(-(red.astype(np.float64) - 128.0) / 100.0))
    assert np.abs(scaled / 254.0 - expected).max() <= PROBABILITY_TOLERANCE


def test_one_pass_serves_every_question_and_output(tmp_path):
    transform, crs, width, height, centre, radius = SCENES["north_up_utm"]
    scene = tmp_path / "scene.tif"
    write_oracle_scene(scene, transform, crs, width, height, centre, radius)
    calls = []

    class Counting(PixelFunctionSegmenter):
        def segment(self, windows, questions):
            calls.append((windows.shape[0], tuple(questions)))
            return super().segment(windows, questions)

    segmenter = Counting(lambda w: red_to_logit(w[:, 0]), input_size=INPUT)
    targets = [
        OutputTarget.for_path(tmp_path / "both.tif"),
        OutputTarget.for_path(tmp_path / "first.gpkg", question_indexes=[0]),
        OutputTarget.for_path(tmp_path / "second.geojson", question_indexes=[1]),
        OutputTarget.for_path(tmp_path / "both.gpkg"),
    ]
    report = run_query(scene, ["a", "b"], targets, segmenter, QueryOptions(mode="tiled", batch_size=3))
    assert sum(n for n, _ in calls) == report.windows_run
    assert all(n <= 3 for n, _ in calls)
    assert all(q == ("a", "b") for _, q in calls)
    with rasterio.open(targets[0].path) as ds:
        assert ds.count == 2
        assert ds.descriptions == ("a", "b")
    assert list(geopandas.read_file(targets[1].path)["question"].unique()) == ["a"]
    assert list(geopandas.read_file(targets[2].path)["question"].unique()) == ["b"]
    assert sorted(geopandas.read_file(targets[3].path)["question"].unique()) == ["a", "b"]
    assert [r.question for r in report.questions] == ["a", "b"]


def test_invalid_windows_are_skipped_without_a_model_call(tmp_path):
    """A scene whose left half is nodata: those windows never reach the model; they come out nodata."""
    transform, crs, width, height, centre, radius = SCENES["north_up_utm"]
    scene = tmp_path / "half.tif"
    write_oracle_scene(scene, transform, crs, width, height, centre, radius,
                       nodata_columns=120)
    batches = []

    class Recording(PixelFunctionSegmenter):
        def segment(self, windows, questions):
            batches.append(windows.shape[0])
            return super().segment(windows, questions)

    out = tmp_path / "half_mask.tif"
    report = run_query(scene, ["q"], [OutputTarget.for_path(out)],
                       Recording(lambda w: red_to_logit(w[:, 0]), input_size=INPUT), QueryOptions(mode="tiled"))
    assert report.windows_skipped > 0
    assert sum(batches) == report.windows_run == report.windows_total - report.windows_skipped
    with rasterio.open(out) as ds:
        mask = ds.read(1)
    assert (mask[:, :120] == 255).all()
    assert set(np.unique(mask[:, 120:])) <= {0, 1}


def write_with_nodata(path, data, invalid):
    """A UTM GeoTIFF of ``data`` (3, H, W) whose ``invalid`` pixels are nodata 0."""
    data[:, invalid] = 0
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype="uint8",
                       nodata=0, crs=CRS.from_epsg(32633), transform=Affine(1, 0, 0, 0, -1, 200)) as dst:
        dst.write(data)
    return path


def test_every_invalid_pixel_is_nodata_even_through_resampled_windows(tmp_path):
    """Whole mode shrinks the scene ~5x; isolated invalid pixels still come out as nodata, alone."""
    width, height = 300, 200
    data = np.full((3, height, width), 120, np.uint8)
    data[0] = 200
    invalid = np.zeros((height, width), bool)
    invalid[50:60:2, 100:200:3] = True  # isolated pixels
    invalid[150, :] = True  # a one-pixel line
    invalid[:, 7] = True
    scene = write_with_nodata(tmp_path / "speckled.tif", data, invalid)
    out = tmp_path / "speckled_mask.tif"
    report = run_query(scene, ["q"], [OutputTarget.for_path(out)], stand_in(), QueryOptions(mode="whole"))
    assert report.mode == "whole"
    with rasterio.open(out) as ds:
        mask = ds.read(1)
    assert (mask[invalid] == 255).all()
    # The model saw ~4.7 scene pixels per canvas pixel, so nodata may spread by half a
    # canvas pixel around invalid input (the nearest canvas sample), never further.
    reach = math.ceil(width / INPUT / 2) + 1
    padded = np.pad(invalid, reach)
    dilated = np.zeros_like(invalid)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            dilated |= padded[reach + dy : reach + dy + height, reach + dx : reach + dx + width]
    assert not (mask[~dilated] == 255).any()
    assert np.count_nonzero(mask == 1) > 0.8 * np.count_nonzero(~invalid)


@pytest.mark.parametrize(("width", "height"), [(40, 40), (23, 38), (INPUT - 1, INPUT // 2)])
def test_a_scene_enlarged_in_whole_mode_gets_back_exactly_its_invalid_pixels(tmp_path, width, height):
    """Enlarging repeats source pixels on the canvas; each valid one must come back valid, beside invalid ones too."""
    rng = np.random.default_rng(width)
    invalid = rng.random((height, width)) < 0.05
    invalid[height // 2, width // 2] = True  # an isolated one, whatever the draw
    scene = write_with_nodata(tmp_path / "small.tif", np.full((3, height, width), 120, np.uint8), invalid)
    out = tmp_path / "small_mask.tif"
    run_query(scene, ["q"], [OutputTarget.for_path(out)], stand_in(), QueryOptions(mode="whole"))
    with rasterio.open(out) as ds:
        mask = ds.read(1)
    np.testing.assert_array_equal(mask == 255, invalid)


def test_all_invalid_scene_writes_empty_outputs_and_reports_nothing_found(tmp_path):
    scene = tmp_path / "empty.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=150, height=100, count=3, dtype="uint8", nodata=0,
                       crs=CRS.from_epsg(32633), transform=Affine(1, 0, 0, 0, -1, 100)) as dst:
        dst.write(np.zeros((3, 100, 150), np.uint8))
    targets = [OutputTarget.for_path(tmp_path / f"empty_out{ext}") for ext in (".tif", ".gpkg", ".geojson")]
    report = run_query(scene, ["anything?"], targets, NeverCalled(), QueryOptions(mode="tiled"))
    assert not report.found and report.windows_run == 0 and report.windows_skipped == report.windows_total
    assert report.questions[0].polygons == 0 and report.questions[0].area_m2 == 0
    with rasterio.open(targets[0].path) as ds:
        assert (ds.read(1) == 255).all()
    assert len(geopandas.read_file(targets[1].path)) == 0
    assert len(geopandas.read_file(targets[2].path)) == 0


def test_everything_is_checked_before_the_model_runs(tmp_path):
    transform, crs, width, height, centre, radius = SCENES["north_up_utm"]
    scene = tmp_path / "scene.tif"
    write_oracle_scene(scene, transform, crs, width, height, centre, radius)
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint8") as dst:
        dst.write(np.full((3, 30, 40), 77, np.uint8))
    existing = tmp_path / "existing.gpkg"
    existing.write_bytes(b"keep me")

    def fails(exc_type, *args, options=QueryOptions()):
        for check in (validate_query, None):
            with pytest.raises(exc_type):
                if check is None:
                    run_query(*args, NeverCalled(), options)
                else:
                    check(*args, options)

    fails(OutputError, scene, ["q"], [OutputTarget.for_path(tmp_path / "ok.tif"), OutputTarget.for_path(existing)])
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "ok.tif").exists()
    fails(OutputError, scene, ["q"], [OutputTarget.for_path(tmp_path / "no_such_folder" / "x.tif")])
    fails(UsageError, scene, ["q"], [OutputTarget.for_path(tmp_path / "a.tif"), OutputTarget.for_path(tmp_path / "a.tif")])
    fails(UsageError, scene, ["  "], [OutputTarget.for_path(tmp_path / "a.tif")])
    fails(UsageError, scene, ["q"], [])
    fails(InputError, tmp_path / "missing.tif", ["q"], [OutputTarget.for_path(tmp_path / "a.tif")])
    fails(UsageError, bare, ["q"], [OutputTarget.for_path(tmp_path / "bare.gpkg")])
    fails(UsageError, bare, ["q"], [OutputTarget.for_path(tmp_path / "a.tif")], options=QueryOptions(gsd=1.0))
    fails(UsageError, scene, ["q"], [OutputTarget.for_path(tmp_path / "a.tif")],
          options=QueryOptions(mode="whole", window=100))
    with pytest.raises(UsageError, match="unknown output type"):
        OutputTarget.for_path(tmp_path / "answer.shp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.tif", "existing.gpkg", "scene.tif"]


def test_scene_without_georeferencing(tmp_path):
    bare = tmp_path / "bare.tif"
    data = np.full((3, 90, 120), 60, np.uint8)
    data[0, 20:60, 30:90] = 230
    with rasterio.open(bare, "w", driver="GTiff", width=120, height=90, count=3, dtype="uint8") as dst:
        dst.write(data)
    raster = OutputTarget.for_path(tmp_path / "bare_mask.tif")
    report = run_query(bare, ["bright?"], [raster], stand_in(), QueryOptions(mode="tiled"))
    assert any("no georeferencing" in w for w in report.warnings)
    assert report.questions[0].area_m2 is None and report.questions[0].polygons == 1
    with rasterio.open(raster.path) as ds:
        assert ds.crs is None and ds.transform.is_identity
        assert np.count_nonzero(ds.read(1) == 1) == 40 * 60
    with pytest.raises(UsageError, match="GeoJSON"):
        run_query(bare, ["bright?"], [OutputTarget.for_path(tmp_path / "b.geojson")], NeverCalled(),
                  QueryOptions(pixel_coordinates=True))
    gpkg = OutputTarget.for_path(tmp_path / "bare.gpkg")
    run_query(bare, ["bright?"], [gpkg], stand_in(), QueryOptions(mode="tiled", pixel_coordinates=True))
    polygons = geopandas.read_file(gpkg.path)
    assert len(polygons) == 1
    assert polygons.geometry.iloc[0].bounds == (30.0, 20.0, 90.0, 60.0)


def test_existing_outputs_replaced_only_with_overwrite(tmp_path):
    transform, crs, width, height, centre, radius = SCENES["thin_strip"]
    scene = tmp_path / "scene.tif"
    write_oracle_scene(scene, transform, crs, width, height, centre, radius)
    out = tmp_path / "out.tif"
    out.write_bytes(b"old")
    with pytest.raises(OutputError):
        run_query(scene, ["q"], [OutputTarget.for_path(out)], NeverCalled(), QueryOptions())
    assert out.read_bytes() == b"old"
    run_query(scene, ["q"], [OutputTarget.for_path(out)], stand_in(), QueryOptions(overwrite=True))
    with rasterio.open(out) as ds:
        assert ds.width == width


def test_a_failing_segmenter_leaves_nothing_behind(tmp_path):
    transform, crs, width, height, centre, radius = SCENES["north_up_utm"]
    scene = tmp_path / "scene.tif"
    write_oracle_scene(scene, transform, crs, width, height, centre, radius)
    calls = []

    class Broken:
        name = "broken"
        input_size = INPUT

        def segment(self, windows, questions):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("device lost")
            return red_to_logit(windows[:, :1]).repeat(len(questions), axis=1).astype(np.float32)

    targets = [OutputTarget.for_path(tmp_path / f"out{ext}") for ext in (".tif", ".gpkg", ".geojson")]
    with pytest.raises(RuntimeError, match="device lost"):
        run_query(scene, ["q"], targets, Broken(), QueryOptions(mode="tiled", batch_size=2, cog=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_a_checked_scene_is_opened_once_and_answers_like_a_path(tmp_path, monkeypatch):
    import segearth_cli.scene as scene_module

    transform, crs, width, height, centre, radius = SCENES["north_up_utm"]
    scene = tmp_path / "scene.tif"
    write_oracle_scene(scene, transform, crs, width, height, centre, radius)
    options = QueryOptions(mode="tiled", probabilities=True)
    by_path = OutputTarget.for_path(tmp_path / "by_path.tif")
    run_query(scene, ["q"], [by_path], stand_in(), options)

    opens = []
    real_open = scene_module.open_scene
    monkeypatch.setattr(scene_module, "open_scene", lambda *a, **k: opens.append(a) or real_open(*a, **k))
    checked = OutputTarget.for_path(tmp_path / "checked.tif")
    with validate_query(scene, ["q"], [checked], options) as opened:
        report = run_query(opened, ["q"], [checked], stand_in(), options)
    assert len(opens) == 1
    assert report.scene == str(scene) and {"open", "read", "model", "total"} <= set(report.timings)
    with rasterio.open(by_path.path) as a, rasterio.open(checked.path) as b:
        np.testing.assert_array_equal(a.read(), b.read())


# -- CRSs that PROJ cannot take to WGS 84 ------------------------------------------------------

#: A CRS of another body (PROJ refuses Mars -> Earth) and a projection PROJ does not know.
MARS_WKT = ('PROJCS["Mars equirectangular",GEOGCS["Mars 2000",DATUM["Mars_2000",SPHEROID["Mars",3396190,0]],'
            'PRIMEM["Reference meridian",0],UNIT["degree",0.0174532925199433]],PROJECTION["Equirectangular"],'
            'PARAMETER["standard_parallel_1",0],PARAMETER["central_meridian",0],PARAMETER["false_easting",0],'
            'PARAMETER["false_northing",0],UNIT["metre",1]]')
UNKNOWN_PROJECTION_WKT = ('PROJCS["unsupported",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
                          '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
                          'PROJECTION["Made_Up_Projection"],PARAMETER["foo",1],UNIT["metre",1]]')


@pytest.mark.parametrize("wkt,refused", [
    (MARS_WKT, {"geojson": "PROJ cannot transform the CRS"}),
    (UNKNOWN_PROJECTION_WKT, {"geojson": "PROJ cannot transform the CRS", "gpkg": "areas in m2"}),
], ids=["another body", "unknown projection"])
def test_a_crs_proj_cannot_take_to_wgs84_is_refused_before_the_model_loads(write_geotiff, tmp_path, capsys,
                                                                            wkt, refused):
    from segearth_cli import cli

    data = np.random.default_rng(0).integers(0, 256, (3, 60, 80), dtype=np.uint8)
    scene = write_geotiff("other.tif", data, crs=CRS.from_wkt(wkt), transform=Affine(100, 0, 0, 0, -100, 0))
    # Areas on another body's ellipsoid are still measured: a GeoPackage of Mars works (not run here).
    for kind in [*refused, "tif"]:
        output = tmp_path / f"answer.{kind}"
        code = cli.run(["query", str(scene), "where?", "--model", "tiny-random", "--device", "cpu", "-o", str(output)])
        _, err = capsys.readouterr()
        if kind in refused:
            assert code == 2, err
            (line,) = [l for l in err.splitlines() if l.startswith("segearth: error:")]
            assert refused[kind] in line and str(scene) in line and str(output) in line
            assert "random weights" not in err  # refused before the model was loaded
            assert not output.exists()
        else:
            assert code == 0, err
            with rasterio.open(output) as mask_file:
                assert mask_file.crs == CRS.from_wkt(wkt) and mask_file.shape == (60, 80)
