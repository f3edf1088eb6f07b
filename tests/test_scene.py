"""Opening scenes: band choice, validity, stretch, georeferencing, window reads, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from segearth_cli.errors import InputError
from segearth_cli.scene import STRETCH_PERCENTILES, open_scene
from segearth_cli.windows import Window, plan_windows

UTM = dict(crs=CRS.from_epsg(32633), transform=Affine(2.0, 0, 400_000, 0, -2.0, 5_000_000))


def native_window(scene, size=None):
    """One window covering the whole (small) scene at its own resolution."""
    size = size or max(scene.width, scene.height)
    return Window(0, 0, scene.width, scene.height, 1.0, size, 0, 0, scene.width, scene.height)


def read_all(path, **kwargs):
    with open_scene(path, **kwargs) as reader:
        window = native_window(reader.scene)
        rgb, valid = reader.read(window)
        return reader.scene, rgb[:, : reader.scene.height, : reader.scene.width], valid[: reader.scene.height, : reader.scene.width]


# -- errors ---------------------------------------------------------------------------------


def test_missing_empty_and_foreign_files_are_input_errors(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "notes.tif").write_text("these are not pixels\n" * 20)
    (tmp_path / "folder.tif").mkdir()
    cases = {"absent.tif": "no such file", "empty.tif": "empty", "notes.tif": "not a raster format",
             "folder.tif": "directory"}
    for name, problem in cases.items():
        with pytest.raises(InputError) as caught:
            open_scene(tmp_path / name)
        message = str(caught.value)
        assert name in message and problem in message and "\n" not in message
        assert caught.value.exit_code == 3


def test_complex_data_is_refused(write_geotiff):
    path = write_geotiff("complex.tif", np.ones((1, 20, 20), np.complex64), **UTM)
    with pytest.raises(InputError, match=r"complex.tif: complex-valued band \(complex64\)"):
        open_scene(path)


def test_bands_beyond_the_file_are_refused(write_geotiff):
    path = write_geotiff("three.tif", np.ones((3, 20, 20), np.uint8), **UTM)
    with pytest.raises(InputError, match="three.tif: --bands asks for band 5, but the file has 3 bands"):
        open_scene(path, bands=(3, 2, 5))


# -- bands ----------------------------------------------------------------------------------


def test_bands_follow_colour_interpretation_and_skip_alpha(write_geotiff):
    data = np.stack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30, 255)])
    data[3, :5] = 0  # transparent top rows
    interp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.alpha]
    path = write_geotiff("bgra.tif", data, colorinterp=interp, **UTM)
    scene, rgb, valid = read_all(path)
    assert scene.bands == (3, 2, 1) and scene.colour == "rgb" and scene.validity == "alpha"
    assert [int(rgb[c, 10, 10]) for c in range(3)] == [30, 20, 10]
    assert not valid[:5].any() and valid[5:].all()
    assert (rgb[:, :5] == 0).all()


def test_bands_override_and_single_band_gray(write_geotiff):
    data = np.stack([np.full((20, 30), v, np.uint8) for v in (1, 2, 3, 4)])
    path = write_geotiff("four.tif", data, **UTM)
    scene, rgb, _ = read_all(path, bands=(4, 3, 2))
    assert scene.bands == (4, 3, 2) and [int(rgb[c, 0, 0]) for c in range(3)] == [4, 3, 2]
    scene, rgb, _ = read_all(path, bands=(2,))
    assert scene.colour == "gray" and (rgb == 2).all() and rgb.shape[0] == 3


def test_first_three_bands_without_colour_interpretation(write_geotiff):
    data = np.stack([np.full((20, 30), v, np.uint8) for v in (5, 6, 7, 8)])
    interp = [ColorInterp.undefined] * 4
    scene, rgb, _ = read_all(write_geotiff("plain.tif", data, colorinterp=interp, **UTM))
    assert scene.bands == (1, 2, 3) and [int(rgb[c, 0, 0]) for c in range(3)] == [5, 6, 7]


def test_palette_is_expanded_and_its_nodata_index_is_invalid(write_geotiff):
    index = np.zeros((20, 30), np.uint8)
    index[:, 10:] = 1
    index[:, 20:] = 2
    colormap = {0: (10, 20, 30, 255), 1: (200, 100, 50, 255), 2: (0, 0, 0, 255)}
    path = write_geotiff("palette.tif", index, colormap=colormap, photometric="palette", nodata=2, **UTM)
    scene, rgb, valid = read_all(path)
    assert scene.colour == "palette" and scene.stretch is None
    assert rgb[:, 0, 0].tolist() == [10, 20, 30] and rgb[:, 0, 15].tolist() == [200, 100, 50]
    assert valid[:, :20].all() and not valid[:, 20:].any()


# -- validity -------------------------------------------------------------------------------


def test_nodata_marks_a_pixel_invalid_only_when_every_band_is_nodata(write_geotiff):
    data = np.full((3, 20, 30), 9, np.uint8)
    data[:, :4] = 0  # all bands nodata
    data[0, 10] = 0  # only red is 0 here: still a valid (dark red) pixel
    path = write_geotiff("nodata.tif", data, nodata=0, **UTM)
    scene, _, valid = read_all(path)
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(valid, src.dataset_mask() > 0)
    assert scene.validity == "nodata" and not valid[:4].any() and valid[4:].all()


def test_nan_and_infinite_floats_are_invalid(write_geotiff):
    data = np.linspace(0, 1, 600, dtype=np.float32).reshape(1, 20, 30)
    data[0, 0, 0] = np.nan
    data[0, 1, 1] = np.inf
    scene, rgb, valid = read_all(write_geotiff("nan.tif", data, **UTM))
    assert not valid[0, 0] and not valid[1, 1] and valid.sum() == 598
    assert rgb[:, 0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("internal", [True, False])
def test_internal_and_external_masks(tmp_path, internal):
    path = tmp_path / ("internal.tif" if internal else "external.tif")
    mask = np.full((40, 50), 255, np.uint8)
    mask[10:20, 5:25] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal):
        with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=3, dtype="uint8", **UTM) as dst:
            dst.write(np.full((3, 40, 50), 77, np.uint8))
            dst.write_mask(mask)
    assert Path(str(path) + ".msk").exists() != internal
    scene, _, valid = read_all(path)
    assert scene.validity == "mask"
    np.testing.assert_array_equal(valid, mask > 0)


# -- stretch --------------------------------------------------------------------------------


def test_one_stretch_for_the_whole_scene(write_geotiff):
    rng = np.random.default_rng(3)
    data = rng.integers(100, 4000, size=(3, 90, 120)).astype(np.uint16)
    data[:, :, :60] //= 4  # a dark left half: per-window stretches would brighten it
    data[:, 0, :] = 0
    path = write_geotiff("u16.tif", data, nodata=0, **UTM)
    with open_scene(path) as reader:
        scene = reader.scene
        valid_pixels = data[:, 1:, :]
        for channel, (low, high) in enumerate(scene.stretch):
            expected = np.percentile(valid_pixels[channel].astype(float), STRETCH_PERCENTILES)
            assert (low, high) == pytest.approx(tuple(expected))
        plan = plan_windows(scene, mode="tiled", input_size=32, overlap=0.0)
        for window in plan:
            rgb, valid = reader.read(window)
            rows, cols = window.src_slices
            raw = data[:, rows, cols].astype(float)
            for channel, (low, high) in enumerate(scene.stretch):
                mapped = np.clip(np.rint((raw[channel] - low) * 255 / (high - low)), 0, 255)
                got = rgb[channel][window.dst_slices]
                region_valid = valid[window.dst_slices]
                np.testing.assert_allclose(got[region_valid], mapped[region_valid], atol=1)


def test_eight_bit_data_passes_through(write_geotiff):
    data = np.arange(600, dtype=np.uint16).reshape(1, 20, 30).astype(np.uint8)
    scene, rgb, _ = read_all(write_geotiff("u8.tif", data, **UTM))
    assert scene.stretch is None
    np.testing.assert_array_equal(rgb[0], data[0])


def test_int64_is_read_and_stretched(write_geotiff):
    data = (np.arange(600, dtype=np.int64).reshape(1, 20, 30) - 300) * 10_000_000_000
    scene, rgb, valid = read_all(write_geotiff("i64.tif", data, **UTM))
    assert scene.dtype == "int64" and scene.stretch is not None and valid.all()
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, -1] == 255


# -- georeferencing -------------------------------------------------------------------------


def test_gcp_only_scene_is_warped_to_a_regular_grid(write_geotiff):
    gcps = [
        GroundControlPoint(row=0, col=0, x=10.00, y=45.10),
        GroundControlPoint(row=0, col=40, x=10.04, y=45.11),
        GroundControlPoint(row=30, col=0, x=9.99, y=45.07),
        GroundControlPoint(row=30, col=40, x=10.03, y=45.08),
    ]
    path = write_geotiff("gcp.tif", np.full((3, 30, 40), 120, np.uint8), gcps=(gcps, CRS.from_epsg(4326)))
    with open_scene(path) as reader:
        scene = reader.scene
        assert scene.georeferencing == "gcps" and scene.warped and scene.georeferenced
        assert scene.crs == CRS.from_epsg(4326) and not scene.transform.is_identity
        rgb, valid = reader.read(native_window(scene))
        inside = valid[: scene.height, : scene.width]
        # The tilted footprint leaves warped corners outside it: invalid, not black data.
        assert 0.5 < inside.mean() < 1.0
        assert (rgb[:, : scene.height, : scene.width][:, inside] >= 100).all()


def test_rpc_only_scene_is_warped_to_wgs84(tmp_path):
    from rasterio.rpc import RPC

    # An axis-aligned RPC: 100 x 100 px spanning 0.02 degrees around (10 E, 45 N).
    rpc = RPC(height_off=0, height_scale=100, lat_off=45.0, lat_scale=0.01, long_off=10.0, long_scale=0.01,
              line_off=50, line_scale=50, samp_off=50, samp_scale=50,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
              samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    path = tmp_path / "rpc.tif"
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        dst = rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8")
    with dst:
        dst.write(np.full((3, 100, 100), 90, np.uint8))
        dst.rpcs = rpc
    with open_scene(path) as reader:
        scene = reader.scene
        assert scene.georeferencing == "rpcs" and scene.warped and scene.crs == CRS.from_epsg(4326)
        west, north = scene.transform.c, scene.transform.f
        east, south = scene.transform @ (scene.width, scene.height)
        assert (west, east, south, north) == pytest.approx((9.99, 10.01, 44.99, 45.01), abs=5e-4)
        rgb, valid = reader.read(native_window(scene))
        assert valid[: scene.height, : scene.width].mean() > 0.9


def test_scene_without_any_georeferencing(write_geotiff):
    path = write_geotiff("plain.tif", np.ones((3, 10, 10), np.uint8))
    with open_scene(path) as reader:
        assert not reader.scene.georeferenced and reader.scene.georeferencing == "none"
        assert reader.scene.crs is None and reader.scene.transform.is_identity


def test_rotated_and_south_up_transforms_are_kept(write_geotiff):
    for name, transform in [("rot.tif", Affine.rotation(20) @ Affine.scale(3, -3)),
                            ("south.tif", Affine(5, 0, 100, 0, 5, 200))]:
        path = write_geotiff(name, np.ones((1, 10, 10), np.uint8), crs=CRS.from_epsg(32633), transform=transform)
        with open_scene(path) as reader:
            assert reader.scene.transform.almost_equals(transform) and not reader.scene.warped


# -- reads ----------------------------------------------------------------------------------


def test_read_places_the_window_in_the_canvas_and_pads_with_invalid_zeros(write_geotiff):
    data = np.random.default_rng(1).integers(1, 255, size=(3, 50, 70)).astype(np.uint8)
    path = write_geotiff("pad.tif", data, **UTM)
    with open_scene(path) as reader:
        window = Window(10, 5, 30, 20, 1.0, 64, 17, 22, 30, 20)
        rgb, valid = reader.read(window)
        np.testing.assert_array_equal(rgb[:, 22:42, 17:47], data[:, 5:25, 10:40])
        assert valid.sum() == 600 and valid[22:42, 17:47].all()
        rgb[:, 22:42, 17:47] = 0
        assert not rgb.any()
        np.testing.assert_array_equal(reader.read_valid(window), valid)
        with pytest.raises(ValueError):
            reader.read(Window(60, 0, 30, 20, 1.0, 64, 0, 0, 30, 20))


def test_overview_read_is_bounded(write_geotiff):
    path = write_geotiff("big.tif", np.full((3, 300, 500), 50, np.uint8), **UTM)
    with open_scene(path) as reader:
        rgb, valid = reader.read_overview(100)
        assert rgb.shape == (3, 60, 100) and valid.shape == (60, 100) and valid.all()


# -- the shared sample scenes ---------------------------------------------------------------


def test_every_real_scene_opens_or_fails_with_one_line_naming_it(real_scenes_dir):
    opened = 0
    for path in sorted(real_scenes_dir.iterdir()):
        if path.name == "MANIFEST.tsv":
            continue
        try:
            with open_scene(path) as reader:
                scene = reader.scene
                plan = plan_windows(scene, mode="auto", input_size=1024)
                assert len(plan) >= 1
                if scene.width * scene.height <= 4_000_000:
                    reader.read(plan[0])
                opened += 1
        except InputError as error:
            message = str(error)
            assert path.name in message and "\n" not in message
            assert path.name in {"gdalraster__complex.tif", "pygaarst__test.tiff", "rasterio__corrupt.tif"}
    assert opened >= 18


@pytest.mark.parametrize("name", [
    "rasterio__RGB.byte.tif",
    "rio-tiler__pix4d_alpha_nodata.tif",
    "rio-tiler__201404_13SED190110_201404_0x1500m_CL_1_mask.tif",
    "rio-tiler__201404_13SED190110_201404_0x1500m_CL_1_extmask.tif",
    "rasterio__float_nan.tif",
    "rasterio__all-nodata.tif",
    "rasterio__cogeo.tif",
])
def test_real_scene_validity_matches_rasterio(real_scenes_dir, name):
    path = real_scenes_dir / name
    _, _, valid = read_all(path)
    with rasterio.open(path) as src:
        expected = src.dataset_mask() > 0
    np.testing.assert_array_equal(valid, expected)
    if name != "rasterio__cogeo.tif":
        assert not valid.all()


def test_real_palette_and_stretched_scenes(real_scenes_dir):
    scene, rgb, valid = read_all(real_scenes_dir / "gdalraster__storml_tcc.tif")
    with rasterio.open(real_scenes_dir / "gdalraster__storml_tcc.tif") as src:
        index, colormap = src.read(1), src.colormap(1)
    assert scene.colour == "palette"
    row, col = 50, 70
    assert tuple(rgb[:, row, col]) == tuple(colormap[int(index[row, col])][:3])
    for name, dtype in [("solaris__ms1.tif", "float64"), ("rasterio__all-nodata.tif", "uint16"),
                        ("georust-gdal__gcp.tif", "uint16")]:
        with open_scene(real_scenes_dir / name) as reader:
            assert reader.scene.dtype == dtype and reader.scene.stretch is not None
            assert len(reader.scene.stretch) == len(reader.scene.bands)


def test_real_gcp_scene_is_warped(real_scenes_dir):
    with open_scene(real_scenes_dir / "georust-gdal__gcp.tif") as reader:
        scene = reader.scene
    assert scene.warped and scene.georeferencing == "gcps" and scene.crs == CRS.from_epsg(4326)
    assert -180 <= scene.transform.c <= 180 and -90 <= scene.transform.f <= 90


def test_real_scene_without_georeferencing(real_scenes_dir):
    with open_scene(real_scenes_dir / "georust-gdal__tinymarble.tif") as reader:
        assert not reader.scene.georeferenced


class _RecordingDataset:
    """Wraps a rasterio dataset and records the windows and output shapes of every read."""

    def __init__(self, dataset):
        self._dataset = dataset
        self.reads = []

    def read(self, *args, **kwargs):
        self.reads.append((kwargs.get("window"), kwargs.get("out_shape")))
        return self._dataset.read(*args, **kwargs)

    def read_masks(self, *args, **kwargs):
        self.reads.append((kwargs.get("window"), kwargs.get("out_shape")))
        return self._dataset.read_masks(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def test_huge_world_scene_plans_windows_and_reads_only_one(real_scenes_dir):
    with open_scene(real_scenes_dir / "rio-tiler__cog_world.tif") as reader:
        scene = reader.scene
        assert (scene.width, scene.height) == (36000, 18000) and scene.crs == CRS.from_epsg(4326)
        plan = plan_windows(scene, mode="auto", input_size=1024)
        assert plan.mode == "tiled" and len(plan) == 41 * 20  # ceil((36000 - 1024) / 896) + 1 by ceil((18000 - 1024) / 896) + 1
        recorder = _RecordingDataset(reader._bands.src)
        reader._bands.src = recorder
        window = plan[len(plan) // 2]
        rgb, valid = reader.read(window)
        assert rgb.shape == (3, 1024, 1024)
        for rio_window, out_shape in recorder.reads:
            assert (rio_window.col_off, rio_window.row_off, rio_window.width, rio_window.height) == (
                window.col_off, window.row_off, window.width, window.height)
        preview, preview_valid = reader.read_overview(1024)
        assert preview.shape == (3, 512, 1024)
        assert all(shape is not None and shape[-2:] == (512, 1024) for _, shape in recorder.reads[-2:])


def test_corrupt_scene_fails_on_read_naming_the_file(real_scenes_dir):
    with open_scene(real_scenes_dir / "rasterio__corrupt.tif") as reader:
        plan = plan_windows(reader.scene, mode="tiled", input_size=1024)
        with pytest.raises(InputError, match="rasterio__corrupt.tif: read failed") as caught:
            reader.read(plan[0])
        assert "\n" not in str(caught.value)
        # GDAL's reason, not rasterio's pointer to an exception the user never sees.
        assert "previous exception" not in str(caught.value) and "TIFFRead" in str(caught.value)


def test_bands_of_different_types_are_read_together(tmp_path):
    path = tmp_path / "mixed.vrt"
    byte = tmp_path / "byte.tif"
    word = tmp_path / "word.tif"
    for name, dtype, value in [(byte, "uint8", 100), (word, "uint16", 3000)]:
        with rasterio.open(name, "w", driver="GTiff", width=20, height=10, count=1, dtype=dtype, **UTM) as dst:
            dst.write(np.full((1, 10, 20), value, dtype))
    bands = "".join(
        f'<VRTRasterBand dataType="{dtype}" band="{i}"><SimpleSource><SourceFilename relativeToVRT="1">{src.name}'
        f'</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
        for i, (src, dtype) in enumerate([(byte, "Byte"), (word, "UInt16"), (byte, "Byte")], start=1)
    )
    path.write_text(f'<VRTDataset rasterXSize="20" rasterYSize="10">{bands}</VRTDataset>')
    scene, rgb, valid = read_all(path)
    assert scene.dtype == "uint16" and scene.stretch is not None and valid.all() and rgb.shape == (3, 10, 20)
