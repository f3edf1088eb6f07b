"""Window planning: whole, tiled, auto, --gsd, and the rules they follow."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from segearth_cli.errors import UsageError
from segearth_cli.windows import (
    AUTO_WHOLE_MAX_FACTOR,
    DEFAULT_OVERLAP,
    ground_pixel_size,
    plan_windows,
)


def fake_scene(width, height, crs=CRS.from_epsg(32633), transform=Affine(0.5, 0, 0, 0, -0.5, 0)):
    return SimpleNamespace(path=Path("fake.tif"), width=width, height=height, crs=crs, transform=transform)


def coverage(plan, width, height):
    count = np.zeros((height, width), dtype=int)
    for w in plan:
        count[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return count


def test_whole_mode_fits_the_long_side_and_truncates_the_short_side():
    plan = plan_windows(fake_scene(791, 718), mode="whole", input_size=1024)
    (w,) = plan.windows
    # 718 * 1024 / 791 = 929.5..., truncated as the official preprocessing does.
    assert (w.dst_width, w.dst_height) == (1024, 929)
    assert (w.dst_col_off, w.dst_row_off) == (0, 47)
    assert (w.col_off, w.row_off, w.width, w.height) == (0, 0, 791, 718)
    assert plan.mode == "whole" and plan.overlap == 0


def test_whole_mode_of_a_tall_scene_centres_it_horizontally():
    (w,) = plan_windows(fake_scene(71, 2475), mode="whole", input_size=1024).windows
    assert (w.dst_width, w.dst_height) == (int(71 * 1024 / 2475), 1024) == (29, 1024)
    assert w.dst_col_off == (1024 - 29) // 2


@pytest.mark.parametrize("width,height,window,overlap", [
    (5000, 3000, None, None), (1025, 4000, 512, 0.25), (3000, 700, 1024, 0.0), (2000, 2000, 300, 0.5),
])
def test_tiled_windows_cover_the_scene_and_stay_full_size_inside_it(width, height, window, overlap):
    plan = plan_windows(fake_scene(width, height), mode="tiled", input_size=1024, window=window, overlap=overlap)
    footprint = window or 1024
    fraction = DEFAULT_OVERLAP if overlap is None else overlap
    assert plan.footprint == footprint and plan.overlap == round(footprint * fraction)
    assert (coverage(plan, width, height) >= 1).all()
    for w in plan:
        assert 0 <= w.col_off and w.col_off + w.width <= width
        assert 0 <= w.row_off and w.row_off + w.height <= height
        assert w.width == min(footprint, width) and w.height == min(footprint, height)
        assert w.size == 1024 and w.scale == pytest.approx(1024 / footprint)
    # The last column and row end exactly at the scene edge.
    assert max(w.col_off + w.width for w in plan) == width
    assert max(w.row_off + w.height for w in plan) == height
    # Row-major: rows share row_off, columns run left to right, rows top to bottom.
    rows = plan.rows
    assert [r[0].row_off for r in rows] == sorted({w.row_off for w in plan})
    for row in rows:
        assert [w.col_off for w in row] == sorted(w.col_off for w in row)
    assert sum(len(r) for r in rows) == len(plan)


def test_tiled_stride_is_window_minus_overlap():
    plan = plan_windows(fake_scene(4000, 1024), mode="tiled", input_size=1024, overlap=0.25)
    offsets = [w.col_off for w in plan]
    assert offsets[:4] == [0, 768, 1536, 2304]
    assert offsets[-1] == 4000 - 1024


def test_native_tiles_need_no_resampling_and_small_scenes_get_one_padded_window():
    plan = plan_windows(fake_scene(3000, 600), mode="tiled", input_size=1024)
    assert all(w.native for w in plan)
    assert {w.height for w in plan} == {600}
    assert {w.dst_row_off for w in plan} == {(1024 - 600) // 2}
    (single,) = plan_windows(fake_scene(300, 200), mode="tiled", input_size=1024).windows
    assert (single.dst_width, single.dst_height) == (300, 200) and single.native


def test_resampled_partial_window_keeps_the_footprint_scale():
    # 2048 px footprint -> scale 0.5; a 1000-row scene becomes 500 canvas rows.
    plan = plan_windows(fake_scene(5000, 1000), mode="tiled", input_size=1024, window=2048)
    assert {w.dst_height for w in plan} == {500}
    assert {w.dst_width for w in plan} == {1024}


def test_auto_rule_switches_at_twice_the_input_size():
    limit = int(AUTO_WHOLE_MAX_FACTOR * 1024)
    assert plan_windows(fake_scene(limit, 100), mode="auto", input_size=1024).mode == "whole"
    assert plan_windows(fake_scene(limit + 1, 100), mode="auto", input_size=1024).mode == "tiled"
    assert plan_windows(fake_scene(100, limit + 1), mode="auto", input_size=1024).mode == "tiled"
    # Asking for a footprint means asking for tiles.
    assert plan_windows(fake_scene(500, 500), mode="auto", input_size=1024, window=256).mode == "tiled"


def test_gsd_sets_the_footprint_from_the_pixel_size():
    plan = plan_windows(fake_scene(10000, 10000), mode="tiled", input_size=1024, gsd=1.0)
    assert plan.footprint == 2048  # 0.5 m pixels, 1 m per model pixel
    feet = fake_scene(10000, 10000, crs=CRS.from_epsg(2263), transform=Affine(1.0, 0, 0, 0, -1.0, 0))
    assert ground_pixel_size(feet) == pytest.approx(0.3048006, rel=1e-6)


def test_ground_pixel_size_of_a_geographic_scene_is_measured_at_its_centre():
    scene = fake_scene(2000, 2000, crs=CRS.from_epsg(4326), transform=Affine(0.0001, 0, 10.0, 0, -0.0001, 45.1))
    # Centre latitude 45.0: a degree of longitude spans about 78.85 km, of latitude 111.13 km.
    expected = math.sqrt(0.0001 * 78_847 * 0.0001 * 111_132)
    assert ground_pixel_size(scene) == pytest.approx(expected, rel=2e-3)
    rotated = fake_scene(100, 100, transform=Affine.rotation(30) @ Affine.scale(2.0, -2.0))
    assert ground_pixel_size(rotated) == pytest.approx(2.0)
    assert ground_pixel_size(fake_scene(10, 10, crs=None)) is None


@pytest.mark.parametrize("kwargs,needle", [
    (dict(mode="sideways"), "--mode"),
    (dict(mode="tiled", window=512, gsd=1.0), "one of them"),
    (dict(mode="whole", window=512), "tiled"),
    (dict(mode="tiled", window=8), "--window"),
    (dict(mode="tiled", overlap=1.0), "--overlap"),
    (dict(mode="tiled", gsd=0.001), "--gsd"),
])
def test_impossible_requests_are_usage_errors(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        plan_windows(fake_scene(4000, 4000), input_size=1024, **kwargs)


def test_gsd_without_a_crs_is_refused():
    with pytest.raises(UsageError, match="coordinate reference system"):
        plan_windows(fake_scene(4000, 4000, crs=None), mode="tiled", input_size=1024, gsd=1.0)


def test_a_window_that_would_shrink_the_scene_to_a_speck_is_refused():
    scene = fake_scene(300, 200)  # 0.5 m pixels
    # The scene's long side fills 300 * 1024 / 19200 = 16 px of the input: the least allowed.
    assert len(plan_windows(scene, mode="tiled", input_size=1024, window=19_200)) == 1
    with pytest.raises(UsageError, match=r"--window 19201: the 300 x 200 px scene would fill only 15.9 px .*--window"):
        plan_windows(scene, mode="tiled", input_size=1024, window=19_201)
    with pytest.raises(UsageError, match=r"--gsd 1e\+300: the 300 x 200 px scene would fill only 0 px .*--gsd"):
        plan_windows(scene, mode="tiled", input_size=1024, gsd=1e300)
    # A scene smaller than a native-resolution window is padded, not shrunk.
    tiny = plan_windows(fake_scene(10, 6), mode="tiled", input_size=1024)
    assert len(tiny) == 1 and tiny.windows[0].dst_width == 10


def test_a_plan_over_the_window_budget_is_refused_naming_the_count_and_options():
    scene = fake_scene(512, 512)
    # 16 px windows sharing 15 px: a stride of 1 px, 497 windows a side.
    with pytest.raises(UsageError) as refused:
        plan_windows(scene, mode="tiled", input_size=256, window=16, overlap=0.99, max_windows=20_000)
    message = refused.value.message
    assert "247,009 windows" in message and "--window 16" in message and "--overlap 0.99" in message
    assert "--max-windows 247009" in message


def test_a_raised_window_budget_lets_the_same_plan_run():
    scene = fake_scene(64, 64)
    plan = plan_windows(scene, mode="tiled", input_size=256, window=16, overlap=0.5, max_windows=49)
    assert len(plan) == 49  # stride 8: offsets 0, 8, ..., 48 on each axis
    with pytest.raises(UsageError, match="49 windows"):
        plan_windows(scene, mode="tiled", input_size=256, window=16, overlap=0.5, max_windows=48)
