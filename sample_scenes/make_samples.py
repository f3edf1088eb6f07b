"""Generate the small sample scenes in this folder, byte for byte the same on every run.

    python3 sample_scenes/make_samples.py [OUT_DIR]

harbour_utm.tif         1500 x 1200 RGB uint8, UTM 33N, 0.5 m: water, a quay, roofs, a road,
                        a round tank and trees; needs two windows or more in tiled mode.
fields_uint16_nodata.tif 800 x 600 four-band uint16 (blue, green, red, near infrared) at 10 m,
                        UTM 31N, reflectance x 10000, nodata 0 outside a tilted footprint:
                        exercises band choice, the per-scene stretch and nodata.
delta_lonlat.tif        640 x 480 RGB uint8 in EPSG:4326 (geographic), ~0.0001 degree pixels:
                        areas and --min-area must be measured in metres all the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

PROFILE = dict(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=2)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:height, 0:width].astype(np.float32)


def _texture(height: int, width: int, seed: int, amplitude: float) -> np.ndarray:
    """Smooth, low-amplitude variation (a few sinusoids) that compresses well, unlike noise."""
    rows, cols = _grid(height, width)
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width), np.float32)
    for _ in range(4):
        fr, fc, phase = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 2 * np.pi)
        out += np.sin(rows * fr + cols * fc + phase)
    return out * (amplitude / 4)


def _paint(canvas: np.ndarray, where: np.ndarray, rgb: tuple[int, int, int]) -> None:
    for band, value in enumerate(rgb):
        canvas[band][where] = value


def harbour(path: Path) -> None:
    height, width = 1200, 1500
    rows, cols = _grid(height, width)
    img = np.zeros((3, height, width), np.float32)
    _paint(img, np.ones((height, width), bool), (96, 122, 70))  # grass
    coast = 420 + 80 * np.sin(rows / 160.0)
    water = cols < coast
    _paint(img, water, (28, 70, 110))
    quay = (cols >= coast) & (cols < coast + 40)
    _paint(img, quay, (150, 150, 145))
    road = np.abs(rows - (0.35 * cols + 620)) < 14
    _paint(img, road & ~water, (80, 80, 84))
    roofs = [(120, 700, 90, 140), (140, 880, 120, 90), (300, 1100, 150, 110), (820, 640, 100, 100),
             (900, 820, 80, 170), (1010, 1180, 140, 120), (520, 1320, 90, 130)]
    for r0, c0, h, w in roofs:
        _paint(img, (rows >= r0) & (rows < r0 + h) & (cols >= c0) & (cols < c0 + w), (168, 72, 52))
    tank = (rows - 640) ** 2 + (cols - 980) ** 2 < 75**2
    _paint(img, tank, (210, 210, 205))
    for centre_r, centre_c in [(200, 1380), (260, 1420), (700, 1420), (1100, 600), (1140, 680)]:
        _paint(img, (rows - centre_r) ** 2 + (cols - centre_c) ** 2 < 30**2, (40, 88, 38))
    img += _texture(height, width, seed=1, amplitude=6.0)
    data = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    with rasterio.open(
        path, "w", width=width, height=height, count=3, dtype="uint8",
        crs=CRS.from_epsg(32633), transform=from_origin(500000.0, 4650000.0, 0.5, 0.5), photometric="RGB",
        **PROFILE,
    ) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]


def fields(path: Path) -> None:
    height, width = 600, 800
    rows, cols = _grid(height, width)
    # Reflectance x 10000 per band (blue, green, red, nir) for crop, bare soil and water.
    crop = (450, 800, 500, 3800)
    soil = (1100, 1400, 1700, 2500)
    water = (700, 600, 300, 150)
    img = np.zeros((4, height, width), np.float32)
    parcel = ((rows // 100) * 7 + (cols // 120) * 3) % 4
    for band in range(4):
        img[band] = np.where(parcel < 2, crop[band], soil[band])
    lake = ((rows - 420) / 90.0) ** 2 + ((cols - 250) / 140.0) ** 2 < 1
    for band in range(4):
        img[band][lake] = water[band]
    img += _texture(height, width, seed=2, amplitude=120.0)[None]
    data = np.clip(np.rint(img), 1, 10000).astype(np.uint16)
    # The acquisition footprint is tilted, as in a satellite tile: outside it is nodata.
    footprint = (rows > 0.18 * cols + 20) & (rows < 0.18 * cols + 520) & (cols > 0.15 * rows + 15)
    data[:, ~footprint] = 0
    with rasterio.open(
        path, "w", width=width, height=height, count=4, dtype="uint16", nodata=0,
        crs=CRS.from_epsg(32631), transform=from_origin(600000.0, 5700000.0, 10.0, 10.0),
        **PROFILE,
    ) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]


def delta(path: Path) -> None:
    height, width = 480, 640
    rows, cols = _grid(height, width)
    img = np.zeros((3, height, width), np.float32)
    _paint(img, np.ones((height, width), bool), (150, 140, 100))  # dry land
    for k, offset in enumerate((-60, 0, 70)):
        channel = np.abs(cols - (320 + offset + 40 * np.sin(rows / (50.0 + 9 * k)) + 0.4 * (rows - 240))) < 9 + 3 * k
        _paint(img, channel, (40, 80, 120))
    sea = rows > 400 + 15 * np.sin(cols / 40.0)
    _paint(img, sea, (25, 55, 100))
    img += _texture(height, width, seed=3, amplitude=5.0)
    data = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    with rasterio.open(
        path, "w", width=width, height=height, count=3, dtype="uint8",
        crs=CRS.from_epsg(4326), transform=from_origin(90.30, 22.05, 0.0001, 0.0001), photometric="RGB",
        **PROFILE,
    ) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]


SCENES = {"harbour_utm.tif": harbour, "fields_uint16_nodata.tif": fields, "delta_lonlat.tif": delta}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, make in SCENES.items():
        make(out_dir / name)
        print(f"{out_dir / name}: {(out_dir / name).stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
