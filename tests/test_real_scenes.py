"""`segearth query` on every public sample scene in ../shared/real_scenes, with tiny-random.

Each scene either succeeds, with outputs on the scene's grid and nodata where the input was
invalid, or fails with a documented exit code and one line on stderr, leaving nothing
behind. The checks compute what they expect from the input file with rasterio directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segearth_cli import cli

SCENES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "real_scenes"
#: What each scene must end with: 0, or (exit code, a fragment of its one error line).
#: A scene missing here fails the test: a new file needs its own expectation.
EXPECTED = {
    "gdalraster__complex.tif": (3, "complex-valued band (complex64) cannot be shown as an image"),
    "gdalraster__geomatrix.tif": 0,
    "gdalraster__int64.tif": 0,
    "gdalraster__storml_tcc.tif": 0,
    "georust-gdal__gcp.tif": 0,
    "georust-gdal__m_3607824_se_17_1_20160620_sub.tif": 0,
    "georust-gdal__tinymarble.tif": (2, "has no georeferencing, so"),
    "pygaarst__test.tiff": (3, "empty file (0 bytes)"),
    "rasterio__RGB.byte.tif": 0,
    "rasterio__all-nodata.tif": 0,
    "rasterio__cogeo.tif": 0,
    "rasterio__corrupt.tif": (3, "truncated or corrupt: the block at column 512, row 512 cannot be read"),
    "rasterio__float_nan.tif": (2, "GeoJSON is lon/lat (RFC 7946), but"),
    "rasterio__rotated.tif": (2, "GeoJSON is lon/lat (RFC 7946), but"),
    "rio-tiler__201404_13SED190110_201404_0x1500m_CL_1.tif": 0,
    "rio-tiler__201404_13SED190110_201404_0x1500m_CL_1_extmask.tif": 0,
    "rio-tiler__201404_13SED190110_201404_0x1500m_CL_1_mask.tif": 0,
    "rio-tiler__cog_world.tif": 0,
    "rio-tiler__pix4d_alpha_nodata.tif": 0,
    "solaris__ms1.tif": 0,
    "solaris__rgb_unmasked.tif": 0,
}
#: One whole-scene window per scene keeps tiny-random to one call (the outputs are still full
#: size, 648 Mpx for cog_world); native-resolution tiles where they matter: a nodata collar cut
#: by window borders, and damaged tiles that only a full-resolution read reaches.
MODE = {"rasterio__RGB.byte.tif": "tiled", "rasterio__corrupt.tif": "tiled"}
#: The damaged tiles lie within the first 16 windows: read in one batch, they fail before any
#: model call, so the clean failure costs no inference.
EXTRA = {"rasterio__corrupt.tif": ("--batch-size", "16")}

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def scene_files() -> list[Path]:
    if not SCENES_DIR.is_dir():
        return []
    return sorted(p for p in SCENES_DIR.iterdir() if ".tif" in p.name and not p.name.endswith(".msk"))


def expected_grid(path: Path):
    """(crs, transform, width, height) of the grid the outputs must use."""
    with rasterio.open(path) as src:
        if src.crs is None and src.transform.is_identity and src.gcps[0]:
            gcps, gcp_crs = src.gcps
            with WarpedVRT(src, src_crs=gcp_crs, crs=gcp_crs) as vrt:
                return vrt.crs, vrt.transform, vrt.width, vrt.height
        return src.crs, src.transform, src.width, src.height


def sample_windows(width: int, height: int) -> list[Window]:
    """The whole grid for ordinary scenes; four corners and the centre for huge ones."""
    if width * height <= 4_000_000:
        return [Window(0, 0, width, height)]
    side = 1024
    spots = [(0, 0), (width - side, 0), (0, height - side), (width - side, height - side),
             ((width - side) // 2, (height - side) // 2)]
    return [Window(c, r, side, side) for c, r in spots]


def check_mask(scene: Path, tif: Path, summary: dict):
    """The mask is on the scene's grid, holds only 0, 1 and 255, and 255 covers invalid input."""
    crs, transform, width, height = expected_grid(scene)
    with rasterio.open(tif) as mask_file:
        assert (mask_file.width, mask_file.height) == (width, height)
        assert mask_file.crs == crs
        assert mask_file.transform.almost_equals(transform)
        assert mask_file.count == 2 and mask_file.nodata == 255
        with rasterio.open(scene) as src:
            warped = src.crs is None and src.transform.is_identity and src.gcps[0]
            for window in sample_windows(width, height):
                mask = mask_file.read(1, window=window)
                probability = mask_file.read(2, window=window)
                assert set(np.unique(mask).tolist()) <= {0, 1, 255}
                assert np.array_equal(mask == 255, probability == 255)
                if warped:
                    continue  # validity of a warped grid is the warper's, not the file's
                invalid = src.dataset_mask(window=window) == 0
                if src.dtypes[0].startswith("float"):
                    invalid |= ~np.isfinite(src.read(1, window=window))
                # Every invalid input pixel is nodata in the answer.
                assert (mask[invalid] == 255).all()
                if summary["mode"] == "tiled" and summary["windows_skipped"] == 0:
                    # Native-resolution windows see every pixel: nodata is exactly the invalid input.
                    assert np.array_equal(mask == 255, invalid)
    return crs


@pytest.mark.parametrize("scene", scene_files() or [None], ids=lambda p: p.name if p else "absent")
def test_query_on_real_scene(scene, tmp_path, capsys):
    if scene is None:
        pytest.skip("../shared/real_scenes not present")
    stem = scene.name.split(".tif")[0]
    outputs = {kind: tmp_path / f"{stem}_answer.{kind}" for kind in ("tif", "gpkg", "geojson")}
    args = ["query", str(scene), "where are the buildings?", "--model", "tiny-random", "--probabilities",
            "--json", "--quiet", "--mode", MODE.get(scene.name, "whole"), *EXTRA.get(scene.name, ())]
    for path in outputs.values():
        args += ["-o", str(path)]
    code = cli.run(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err

    assert scene.name in EXPECTED, f"{scene.name}: no expected outcome; add one to EXPECTED"
    expected = EXPECTED[scene.name]
    if expected != 0:
        expected_code, fragment = expected
        assert code == expected_code, err
        errors = [line for line in err.splitlines() if line.startswith("segearth: error:")]
        assert len(errors) == 1, err
        assert scene.name in errors[0] and fragment in errors[0], errors[0]
        assert out == ""
        assert list(tmp_path.iterdir()) == []  # no output and no temporary left behind
        if code == 2:
            # Refused outputs (vectors without georeferencing, GeoJSON without a CRS): the
            # mask alone must still work on the scene's pixel grid.
            code = cli.run([*args[: args.index("-o")], "-o", str(outputs["tif"])])
            out, err = capsys.readouterr()
            assert code == 0, err
            assert "Traceback" not in err
            check_mask(scene, outputs["tif"], json.loads(out))
        return

    assert code == 0, err
    summary = json.loads(out)
    assert summary["windows_run"] + summary["windows_skipped"] == summary["windows_total"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in outputs.values())
    crs = check_mask(scene, outputs["tif"], summary)

    polygons = geopandas.read_file(outputs["gpkg"])
    assert set(polygons.columns) >= {"question", "area_m2", "mean_probability", "scene", "model", "geometry"}
    assert len(polygons) == sum(q["polygons"] for q in summary["questions"])
    if crs is not None and len(polygons):
        assert polygons.crs == crs
    lonlat = geopandas.read_file(outputs["geojson"])
    assert len(lonlat) == len(polygons)
    if len(lonlat):
        assert lonlat.crs.to_epsg() == 4326
        minx, miny, maxx, maxy = lonlat.total_bounds
        assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
