"""Vectorization speed and memory on a 20000 x 20000 answer with about 10,000 polygons.

Prints the seconds spent in VectorSink (polygonize, dissolve across blocks, areas) and in
writing the GeoPackage, the polygon count and the process's peak RSS. The mask is a grid
of random ellipses, some with holes and some straddling block borders, generated block
by block (``--rows`` rows at a time) so the full mask never exists.

    python3 bench/vector_bench.py [--size 20000] [--cells 100] [--rows 1024]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from segearth_cli.outputs.vectors import VectorSink
from segearth_cli.scene import Scene
from segearth_cli.stitch import RowBlock


def make_blobs(size: int, cells: int, seed: int = 0) -> np.ndarray:
    """One ellipse per grid cell: centre x, centre y, axes, angle, hole flag."""

    rng = np.random.default_rng(seed)
    step = size / cells
    centres = (np.arange(cells) + 0.5) * step
    cx, cy = np.meshgrid(centres, centres)
    count = cells * cells
    jitter = rng.uniform(-0.2, 0.2, size=(2, count)) * step
    axes = rng.uniform(0.15, 0.42, size=(2, count)) * step
    angle = rng.uniform(0, 180, size=count)
    hole = rng.random(count) < 0.3
    return np.column_stack([cx.ravel() + jitter[0], cy.ravel() + jitter[1], axes[0], axes[1], angle, hole])


def render(blobs: np.ndarray, row_off: int, rows: int, width: int) -> np.ndarray:
    canvas = np.zeros((rows, width), dtype=np.uint8)
    reach = blobs[:, 2:4].max(axis=1) + 2
    near = np.abs(blobs[:, 1] - (row_off + rows / 2)) < rows / 2 + reach
    for x, y, a, b, angle, hole in blobs[near]:
        centre = (int(round(x)), int(round(y - row_off)))
        cv2.ellipse(canvas, centre, (int(a), int(b)), angle, 0, 360, 1, -1)
        if hole:
            cv2.ellipse(canvas, centre, (int(a / 3), int(b / 3)), angle, 0, 360, 0, -1)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1024)
    args = parser.parse_args()

    size = args.size
    scene = Scene(
        path=Path("generated.tif"), width=size, height=size, count=3, dtype="uint8",
        crs=CRS.from_epsg(32633), transform=Affine(0.5, 0, 400000, 0, -0.5, 5000000),
        georeferencing="transform", warped=False, bands=(1, 2, 3), colour="rgb", stretch=None,
        nodata=None, validity="none",
    )
    sink = VectorSink(scene, ["generated blobs"], [0], 0.5, attributes={"scene": "generated.tif", "model": "bench"})
    blobs = make_blobs(size, args.cells)
    valid = np.ones((args.rows, size), dtype=bool)
    vectorize = generate = cpu = 0.0
    for row_off in range(0, size, args.rows):
        rows = min(args.rows, size - row_off)
        started = time.perf_counter()
        mask = render(blobs, row_off, rows, size)
        probability = np.where(mask > 0, np.float32(0.8), np.float32(0.1))[None]
        generate += time.perf_counter() - started
        started, cpu_started = time.perf_counter(), time.process_time()
        sink.write(RowBlock(row_off, probability, valid[:rows]))
        vectorize += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
    started, cpu_started = time.perf_counter(), time.process_time()
    sink.close()
    vectorize += time.perf_counter() - started
    cpu += time.process_time() - cpu_started
    summary = sink.summary()[0]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        sink.write_gpkg(Path(folder) / "bench.gpkg")
        gpkg = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mask: {size}x{size}, blocks of {args.rows} rows, {len(blobs)} ellipses drawn")
    print(f"polygons: {summary.polygon_count}  answer pixels: {summary.pixel_count}  area: {summary.total_area_m2:.0f} m2")
    print(f"vectorization: {vectorize:.1f} s wall, {cpu:.1f} s CPU  (mask generation, not counted: {generate:.1f} s)")
    print(f"GeoPackage write: {gpkg:.1f} s")
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
