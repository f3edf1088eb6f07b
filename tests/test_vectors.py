"""Polygons of the answer: seam-free across row blocks, holes kept, true areas, RFC 7946 GeoJSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import geopandas
import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from segearth_cli.errors import EXIT_USAGE, UsageError
from segearth_cli.outputs.vectors import LAYER_NAME, VectorSink
from segearth_cli.scene import Scene
from segearth_cli.stitch import RowBlock

UTM = Affine(10.0, 0, 500000, 0, -10.0, 4000000)


def make_scene(width, height, crs="EPSG:32631", transform=UTM, georeferencing="transform"):
    return Scene(
        path=Path("scene.tif"), width=width, height=height, count=3, dtype="uint8",
        crs=CRS.from_user_input(crs) if crs else None, transform=transform, georeferencing=georeferencing,
        warped=False, bands=(1, 2, 3), colour="rgb", stretch=None, nodata=None, validity="none",
    )


def feed(sink, probability, valid=None, rows=7):
    """Stream planes (M, H, W) or one plane (H, W) into ``sink`` in blocks of ``rows``."""
    probability = np.asarray(probability, dtype=np.float32)
    if probability.ndim == 2:
        probability = probability[None]
    height = probability.shape[1]
    valid = np.ones(probability.shape[1:], dtype=bool) if valid is None else valid
    for row in range(0, height, rows):
        sink.write(RowBlock(row, probability[:, row : row + rows], valid[row : row + rows]))
    sink.close()
    return sink


def polygons(sink):
    return list(sink.frame().geometry)


def ring_mask(height=60, width=50):
    """An annulus crossing many 7-row block borders: one polygon with one hole."""
    yy, xx = np.mgrid[0:height, 0:width]
    distance = np.hypot(yy - 30, xx - 25)
    return ((distance < 22) & (distance >= 9)).astype(np.float32)


@pytest.mark.parametrize("rows", [1, 7, 30, 1000])
def test_shape_crossing_block_borders_is_one_polygon_with_its_hole(rows):
    mask = ring_mask()
    sink = feed(VectorSink(make_scene(50, 60), ["ring"], threshold=0.5), mask * 0.9, rows=rows)
    shapes = polygons(sink)
    assert len(shapes) == 1
    ring = shapes[0]
    assert ring.geom_type == "Polygon" and ring.is_valid and len(ring.interiors) == 1
    # Pixel-edge polygons of a 10 m grid: the area is the pixel count times 100 m2, exactly.
    assert ring.area == pytest.approx(mask.sum() * 100.0, rel=1e-12)
    frame = sink.frame()
    assert frame.loc[0, "pixel_count"] == mask.sum()
    assert frame.loc[0, "area_m2"] == pytest.approx(mask.sum() * 100.0, rel=1e-12)
    assert frame.loc[0, "mean_probability"] == pytest.approx(0.9, abs=1e-6)
    # No seam: the outline has no vertex on a block border other than real corners.
    whole = feed(VectorSink(make_scene(50, 60), ["ring"]), mask * 0.9, rows=1000)
    assert shapely.equals(ring, polygons(whole)[0])
    assert len(shapely.get_coordinates(ring)) == len(shapely.get_coordinates(polygons(whole)[0]))


def test_streaming_matches_whole_scene_components_on_random_blobs():
    rng = np.random.default_rng(3)
    height, width = 120, 90
    noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2.5)
    probability = np.clip((noise - noise.mean()) * 8 + 0.5, 0, 1).astype(np.float32)
    valid = np.ones((height, width), dtype=bool)
    valid[:, :5] = False
    mask = ((probability > 0.5) & valid).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=4)
    expected_pixels = sorted(np.bincount(labels.ravel())[1:].tolist())
    expected_means = sorted(
        float(probability[labels == k].mean()) for k in range(1, count)
    )
    for rows in (1, 2, 5, 16, 200):
        sink = feed(VectorSink(make_scene(width, height), ["blobs"]), probability, valid, rows=rows)
        frame = sink.frame()
        assert len(frame) == count - 1, rows
        assert sorted(frame["pixel_count"].tolist()) == expected_pixels
        assert np.allclose(sorted(frame["area_m2"]), np.array(expected_pixels) * 100.0)
        assert np.allclose(sorted(frame["mean_probability"]), expected_means, atol=1e-6)
        assert all(g.is_valid for g in frame.geometry)
        # Polygons of different components only ever touch at corners.
        union = shapely.union_all(list(frame.geometry))
        assert union.area == pytest.approx(mask.sum() * 100.0)


def test_u_shapes_that_join_and_split_across_blocks():
    mask = np.zeros((40, 30), dtype=np.float32)
    mask[5:35, 3:6] = 1  # left arm
    mask[5:35, 20:23] = 1  # right arm
    mask[30:35, 3:23] = 1  # joins them at the bottom (a U)
    mask[5:8, 3:23] = 1  # and again at the top: a frame with a hole
    mask[38:40, 0:30] = 1  # separate bar on the last rows
    sink = feed(VectorSink(make_scene(30, 40), ["q"]), mask, rows=3)
    shapes = sorted(polygons(sink), key=lambda g: g.area)
    assert len(shapes) == 2
    assert len(shapes[1].interiors) == 1 and shapes[1].area == pytest.approx((mask[:36].sum()) * 100)


@pytest.mark.parametrize(
    "transform",
    [
        Affine(10.0, 0, 500000, 0, 10.0, 4000000),  # south-up
        Affine.translation(500000, 4000000) @ Affine.rotation(30) @ Affine.scale(10, -10),  # rotated
    ],
    ids=["south-up", "rotated"],
)
def test_pixel_to_map_follows_the_affine(transform):
    mask = np.zeros((20, 20), dtype=np.float32)
    mask[2:12, 4:9] = 1
    sink = feed(VectorSink(make_scene(20, 20, transform=transform), ["q"]), mask, rows=4)
    (shape,) = polygons(sink)
    corners = [transform @ (4, 2), transform @ (9, 2), transform @ (9, 12), transform @ (4, 12)]
    assert shapely.equals(shape, shapely.Polygon(corners).normalize())
    assert sink.frame().loc[0, "area_m2"] == pytest.approx(50 * abs(transform.determinant))


def _zone_area(lat_deg, lon_span_deg, a=6378137.0, f=1 / 298.257223563):
    """Ellipsoidal area between the equator and a parallel over a longitude span (closed form)."""
    e2 = f * (2 - f)
    e = math.sqrt(e2)
    b2 = (a * (1 - f)) ** 2
    s = math.sin(math.radians(lat_deg))
    q = s / (1 - e2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)
    return math.radians(lon_span_deg) / 2 * b2 * q


def _cell_area(west, south, east, north):
    return _zone_area(north, east - west) - _zone_area(south, east - west)


def test_geographic_areas_are_geodesic():
    pixel = 0.01
    transform = Affine(pixel, 0, 10.0, 0, -pixel, 61.0)  # 10E..11E, 61N..60N
    mask = np.zeros((100, 100), dtype=np.float32)
    mask[10:60, 20:45] = 1
    mask[25:35, 30:35] = 0  # a hole
    sink = feed(VectorSink(make_scene(100, 100, crs="EPSG:4326", transform=transform), ["q"]), mask, rows=9)
    frame = sink.frame()
    assert len(frame) == 1 and len(frame.geometry[0].interiors) == 1
    outer = _cell_area(10.20, 61.0 - 0.60, 10.45, 61.0 - 0.10)
    hole = _cell_area(10.30, 61.0 - 0.35, 10.35, 61.0 - 0.25)
    assert frame.loc[0, "area_m2"] == pytest.approx(outer - hole, rel=1e-5)
    assert sink.summary()[0].total_area_m2 == pytest.approx(outer - hole, rel=1e-5)


def test_projected_areas_use_the_unit_and_distortion():
    mask = np.zeros((10, 10), dtype=np.float32)
    mask[2:6, 3:8] = 1
    feet = Affine(3.0, 0, 1000000, 0, -3.0, 200000)
    sink = feed(VectorSink(make_scene(10, 10, crs="EPSG:2263", transform=feet), ["q"]), mask)
    us_foot = 1200 / 3937
    assert sink.frame().loc[0, "area_m2"] == pytest.approx(20 * (3 * us_foot) ** 2, rel=1e-9)

    # Web Mercator at 60N: planar areas are 4x the ground; area_m2 must be the ground area.
    y60 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10.0, 60.0)[1]
    mercator = Affine(20.0, 0, 1113194.9, 0, -20.0, y60)
    sink = feed(VectorSink(make_scene(10, 10, crs="EPSG:3857", transform=mercator), ["q"]), mask)
    planar = 20 * 400.0
    assert sink.frame().loc[0, "area_m2"] == pytest.approx(planar * math.cos(math.radians(60)) ** 2, rel=0.01)


def test_min_area_in_square_metres_also_in_geographic_crs():
    mask = np.zeros((40, 40), dtype=np.float32)
    mask[2:4, 2:4] = 1  # 4 px
    mask[10:30, 10:30] = 1  # 400 px
    sink = feed(VectorSink(make_scene(40, 40), ["q"], min_area_m2=1000.0), mask)
    assert sink.frame()["pixel_count"].tolist() == [400]

    pixel = 0.001
    transform = Affine(pixel, 0, 20.0, 0, -pixel, 70.0)
    small = _cell_area(20.002, 70 - 0.004, 20.004, 70 - 0.002)
    big = _cell_area(20.010, 70 - 0.030, 20.030, 70 - 0.010)
    scene = make_scene(40, 40, crs="EPSG:4326", transform=transform)
    sink = feed(VectorSink(scene, ["q"], min_area_m2=(small + big) / 2), mask)
    assert sink.frame()["area_m2"].tolist() == [pytest.approx(big, rel=1e-5)]
    sink = feed(VectorSink(scene, ["q"], min_area_m2=small * 0.99), mask)
    assert len(sink.frame()) == 2


def _staircase(size=60):
    mask = np.tril(np.ones((size, size), dtype=np.float32))
    mask[25:35, 10:20] = 0  # a hole that simplification must keep
    return mask


def test_simplify_in_metres_projected():
    mask = _staircase()
    scene = make_scene(60, 60, transform=Affine(1.0, 0, 500000, 0, -1.0, 4000000))
    original = polygons(feed(VectorSink(scene, ["q"]), mask))[0]
    simplified = polygons(feed(VectorSink(scene, ["q"], simplify_m=2.0), mask))[0]
    assert len(simplified.exterior.coords) < len(original.exterior.coords) / 5
    assert len(simplified.interiors) == 1 and simplified.is_valid
    assert shapely.hausdorff_distance(original, simplified) <= 2.0 + 1e-9
    kept = polygons(feed(VectorSink(scene, ["q"], simplify_m=0.4), mask))[0]
    assert len(kept.exterior.coords) == len(original.exterior.coords)


def test_simplify_in_metres_geographic():
    mask = _staircase()
    lat = 60.0
    pixel = 2e-5  # about 2.2 m north-south, 1.1 m east-west at 60N
    transform = Affine(pixel, 0, 9.0, 0, -pixel, lat)
    scene = make_scene(60, 60, crs="EPSG:4326", transform=transform)
    original = polygons(feed(VectorSink(scene, ["q"]), mask))[0]
    simplified_sink = feed(VectorSink(scene, ["q"], simplify_m=3.0), mask)
    simplified = polygons(simplified_sink)[0]
    assert len(simplified.interiors) == 1 and simplified.is_valid
    assert len(simplified.exterior.coords) < len(original.exterior.coords) / 4
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    in_metres = [shapely.transform(g, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
                 for g in (original, simplified)]
    assert shapely.hausdorff_distance(*in_metres) <= 3.0 * 1.01  # UTM 32N at 9E is true to 0.1 %
    # Each staircase corner is about 1 m off the line through its neighbours: 0.5 m keeps them all.
    kept = polygons(feed(VectorSink(scene, ["q"], simplify_m=0.5), mask))[0]
    assert len(kept.exterior.coords) == len(original.exterior.coords)
    # area_m2 describes the geometry written
    geod = pyproj.Geod(ellps="WGS84")
    assert simplified_sink.frame().loc[0, "area_m2"] == pytest.approx(abs(geod.geometry_area_perimeter(simplified)[0]), rel=1e-4)


def test_gpkg_keeps_crs_and_puts_questions_in_one_layer(tmp_path):
    probability = np.zeros((2, 30, 30), dtype=np.float32)
    probability[0, 2:10, 2:10] = 0.8
    probability[1, 12:20, 5:25] = 0.7
    probability[1, 25:28, 25:28] = 0.9
    sink = VectorSink(make_scene(30, 30), ["where are roofs?", "where is water?"],
                      attributes={"scene": "scene.tif", "model": "tiny-random"})
    feed(sink, probability, rows=4)
    path = tmp_path / "answer.gpkg"
    sink.write_gpkg(path)
    assert [name for name, _ in pyogrio.list_layers(path)] == [LAYER_NAME]
    frame = geopandas.read_file(path, layer=LAYER_NAME)
    assert frame.crs.to_epsg() == 32631
    assert frame["question"].tolist() == ["where are roofs?", "where is water?", "where is water?"]
    assert set(frame.columns) >= {"question", "area_m2", "mean_probability", "scene", "model", "pixel_count"}
    assert frame["scene"].unique().tolist() == ["scene.tif"] and frame["model"].unique().tolist() == ["tiny-random"]
    assert frame["area_m2"].tolist() == pytest.approx([6400.0, 16000.0, 900.0])
    summary = sink.summary()
    assert [(s.question, s.polygon_count) for s in summary] == [("where are roofs?", 1), ("where is water?", 2)]
    assert summary[1].total_area_m2 == pytest.approx(16900.0)


def test_empty_answer_gives_valid_empty_layers(tmp_path):
    sink = feed(VectorSink(make_scene(20, 20), ["q"], attributes={"scene": "s", "model": "m"}),
                np.zeros((20, 20), dtype=np.float32))
    sink.write_gpkg(tmp_path / "empty.gpkg")
    sink.write_geojson(tmp_path / "empty.geojson")
    info = pyogrio.read_info(tmp_path / "empty.gpkg", layer=LAYER_NAME)
    assert info["features"] == 0 and info["crs"] == "EPSG:32631"
    assert {"question", "area_m2", "mean_probability", "scene", "model"} <= set(info["fields"])
    document = json.loads((tmp_path / "empty.geojson").read_text())
    assert document["type"] == "FeatureCollection" and document["features"] == [] and "crs" not in document
    assert sink.summary()[0].polygon_count == 0


def _all_coordinates(document):
    coordinates = []
    for feature in document["features"]:
        coordinates.extend(shapely.get_coordinates(shapely.geometry.shape(feature["geometry"])).tolist())
    return np.array(coordinates)


def test_geojson_is_rfc7946(tmp_path):
    mask = ring_mask()
    sink = feed(VectorSink(make_scene(50, 60), ["ring"], attributes={"scene": "s", "model": "m"}), mask)
    path = tmp_path / "answer.geojson"
    sink.write_geojson(path)
    text = path.read_text()
    document = json.loads(text)
    assert "crs" not in document
    coordinates = _all_coordinates(document)
    assert (np.abs(coordinates[:, 0]) <= 180).all() and (np.abs(coordinates[:, 1]) <= 90).all()
    # The scene is near 3E 36N (UTM 31N): lon/lat order, not lat/lon.
    assert 2.9 < coordinates[:, 0].min() < 3.1 and 36.0 < coordinates[:, 1].min() < 36.2
    decimals = max(len(str(v).split(".")[1]) if "." in str(v) else 0 for v in coordinates.ravel())
    assert decimals <= 7
    geometry = shapely.geometry.shape(document["features"][0]["geometry"])
    assert geometry.exterior.is_ccw and not geometry.interiors[0].is_ccw  # right-hand rule
    expected = sink.frame().to_crs("EPSG:4326").geometry[0]
    # Equal up to the 7-decimal rounding (1 cm) along a 2 km outline.
    assert geometry.symmetric_difference(expected).area < 1e-3 * expected.area
    assert document["features"][0]["properties"]["question"] == "ring"


def test_geojson_splits_polygons_at_the_antimeridian(tmp_path):
    # A geographic scene from 179.5E to 180.5E (longitudes past 180 in the file).
    pixel = 0.01
    scene = make_scene(100, 50, crs="EPSG:4326", transform=Affine(pixel, 0, 179.5, 0, -pixel, -16.0))
    mask = np.zeros((50, 100), dtype=np.float32)
    mask[10:40, 20:80] = 1  # 179.7 .. 180.3
    mask[5:8, 90:95] = 1  # 180.4 .. 180.45: entirely east of the antimeridian
    sink = feed(VectorSink(scene, ["q"]), mask)
    path = tmp_path / "answer.geojson"
    sink.write_geojson(path)
    document = json.loads(path.read_text())
    coordinates = _all_coordinates(document)
    assert (np.abs(coordinates[:, 0]) <= 180).all() and (np.abs(coordinates[:, 1]) <= 90).all()
    shapes = sorted((shapely.geometry.shape(f["geometry"]) for f in document["features"]), key=lambda g: -g.area)
    split, east = shapes
    assert split.geom_type == "MultiPolygon" and len(split.geoms) == 2
    west_part, east_part = sorted(split.geoms, key=lambda g: -g.bounds[0])
    assert west_part.bounds[0] == pytest.approx(179.7) and west_part.bounds[2] == pytest.approx(180.0)
    assert east_part.bounds[0] == pytest.approx(-180.0) and east_part.bounds[2] == pytest.approx(-179.7)
    assert east.geom_type == "Polygon" and east.bounds[0] == pytest.approx(-179.6)


def test_areas_of_projected_polygons_crossing_the_antimeridian_are_measured_on_the_short_side():
    # NSIDC polar stereographic north (EPSG:3413, central meridian 45W): x < 0, y > 0 near the
    # pole looks along 135E, so 180 runs through these 1 km pixels.
    scene = make_scene(300, 300, crs="EPSG:3413", transform=Affine(1000.0, 0, -300_000, 0, -1000.0, 300_000))
    mask = np.zeros((300, 300), dtype=np.float32)
    mask[0:9, 5:12] = 1
    mask[100:140, 20:60] = 1
    frame = feed(VectorSink(scene, ["q"]), mask, rows=16).frame()
    to_lonlat = pyproj.Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True)
    lons = [to_lonlat.transform(x, y)[0] for x, y in shapely.get_coordinates(frame.geometry.values)]
    assert max(lons) > 179 and min(lons) < -179  # the test means what it says
    polar = pyproj.Proj("EPSG:3413")
    for geometry, area in zip(frame.geometry.values, frame["area_m2"]):
        lon, lat = to_lonlat.transform(*shapely.centroid(geometry).coords[0])
        # Small polygons: the planar area over the projection's areal scale at the centre.
        expected = geometry.area / polar.get_factors(lon, lat).areal_scale
        assert area == pytest.approx(expected, rel=2e-3)


def test_geojson_cuts_a_global_grid_at_the_poles(tmp_path):
    # Cell-centred global grid (ERA5 style): the top row's edge is at 90.125N, the bottom's at 90.125S.
    pixel = 0.25
    scene = make_scene(1440, 721, crs="EPSG:4326", transform=Affine(pixel, 0, -0.125, 0, -pixel, 90.125))
    mask = np.zeros((721, 1440), dtype=np.float32)
    mask[0:4, 100:200] = 1  # touches the north pole's row
    mask[717:721, 300:400] = 1  # and the south pole's
    mask[300:310, 500:510] = 1  # mid-latitudes: untouched by the cut
    sink = feed(VectorSink(scene, ["q"]), mask)
    path = tmp_path / "answer.geojson"
    sink.write_geojson(path)
    document = json.loads(path.read_text())
    shapes = sorted((shapely.geometry.shape(f["geometry"]) for f in document["features"]), key=lambda g: -g.bounds[3])
    north, middle, south = shapes
    assert north.bounds[3] == pytest.approx(90.0) and north.bounds[1] == pytest.approx(89.125)
    assert south.bounds[1] == pytest.approx(-90.0) and south.bounds[3] == pytest.approx(-89.125)
    assert middle.bounds == pytest.approx((124.875, 12.625, 127.375, 15.125))
    assert len(document["features"]) == sink.summary()[0].polygon_count


def test_geojson_splits_projected_polygons_crossing_the_antimeridian(tmp_path):
    # UTM 60S (central meridian 177E): 180E lies about 3 degrees east, near x = 834 km at 17S.
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32760", always_xy=True)
    x180, y = to_utm.transform(180.0, -17.0)
    transform = Affine(100.0, 0, x180 - 5000, 0, -100.0, y + 5000)
    scene = make_scene(100, 100, crs="EPSG:32760", transform=transform)
    mask = np.zeros((100, 100), dtype=np.float32)
    mask[20:80, 20:80] = 1
    sink = feed(VectorSink(scene, ["q"]), mask, rows=16)
    path = tmp_path / "answer.geojson"
    sink.write_geojson(path)
    document = json.loads(path.read_text())
    geometry = shapely.geometry.shape(document["features"][0]["geometry"])
    assert geometry.geom_type == "MultiPolygon" and len(geometry.geoms) == 2
    coordinates = _all_coordinates(document)
    assert (np.abs(coordinates[:, 0]) <= 180).all()
    assert coordinates[:, 0].max() == pytest.approx(180.0) and coordinates[:, 0].min() < -179.9


def test_scene_without_georeferencing_needs_pixel_coordinates(tmp_path):
    bare = make_scene(20, 20, crs=None, transform=Affine.identity(), georeferencing="none")
    with pytest.raises(UsageError) as caught:
        VectorSink(bare, ["q"])
    assert caught.value.exit_code == EXIT_USAGE
    assert "scene.tif" in str(caught.value) and "--pixel-coordinates" in str(caught.value)

    mask = np.zeros((20, 20), dtype=np.float32)
    mask[3:5, 6:9] = 1
    sink = feed(VectorSink(bare, ["q"], pixel_coordinates=True), mask)
    sink.write_gpkg(tmp_path / "pixels.gpkg")
    frame = geopandas.read_file(tmp_path / "pixels.gpkg")
    assert frame.crs is None
    assert shapely.equals(frame.geometry[0], box(6, 3, 9, 5))
    assert np.isnan(frame.loc[0, "area_m2"]) and frame.loc[0, "pixel_count"] == 6
    with pytest.raises(UsageError, match="RFC 7946"):
        sink.write_geojson(tmp_path / "pixels.geojson")
    with pytest.raises(UsageError):
        VectorSink(bare, ["q"], pixel_coordinates=True, min_area_m2=10)


def test_invalid_pixels_never_become_polygons():
    probability = np.full((20, 20), 0.9, dtype=np.float32)
    valid = np.zeros((20, 20), dtype=bool)
    valid[5:10, 5:10] = True
    sink = feed(VectorSink(make_scene(20, 20), ["q"]), probability, valid)
    assert sink.frame()["pixel_count"].tolist() == [25]


def test_contour_tracing_matches_gdal_polygonize_on_noise():
    import rasterio.features

    from segearth_cli.outputs.vectors import _trace_component

    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(150):
        height, width = rng.integers(1, 25, size=2)
        mask = (rng.random((height, width)) < rng.uniform(0.3, 0.8)).astype(np.uint8)
        if trial % 3 == 0:
            mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
        count, labels = cv2.connectedComponents(mask, connectivity=4)
        for label in range(1, count):
            rows, cols = np.nonzero(labels == label)
            inside = labels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == label
            traced = _trace_component(inside)
            parts = [shapely.geometry.shape(g) for g, _ in
                     rasterio.features.shapes(inside.view(np.uint8), mask=inside, connectivity=4)]
            reference = shapely.union_all(parts)
            assert traced is not None and traced.is_valid
            assert traced.area == inside.sum()
            assert shapely.equals(traced, reference)
            checked += 1
    assert checked > 500


def test_nested_rings_take_the_whole_block_path():
    # Concentric square rings: their bounding boxes cover the block many times over.
    size = 41
    yy, xx = np.mgrid[0:size, 0:size]
    ring_index = np.maximum(np.abs(yy - 20), np.abs(xx - 20))
    mask = (ring_index % 4 < 2).astype(np.float32)
    for rows in (5, 100):
        sink = feed(VectorSink(make_scene(size, size), ["q"]), mask, rows=rows)
        frame = sink.frame()
        count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        assert len(frame) == count - 1
        assert frame["area_m2"].sum() == pytest.approx(mask.sum() * 100.0)
        assert all(g.is_valid for g in frame.geometry)
        assert sorted(len(g.interiors) for g in frame.geometry)[-1] == 1
