"""How far the reduced read of a footprint beyond 64 Mpx lands from the exact official canvas.

A footprint of more than ``EXACT_READ_MAX_PIXELS`` is read by GDAL at twice the canvas
size (from overviews when the file has them) before the official ``cv2.resize``. On a
footprint small enough for the exact path, this script makes both canvases and prints the
fraction of canvas pixels (channel values) that differ and the largest and mean grey-level
difference.

    python3 bench/reduced_read.py [SCENE] [--window PIXELS] [--input-size 1024]

Default: an 8000 px footprint (64 Mpx) at the centre of ``rio-tiler__cog_world.tif``
(``../shared/real_scenes/``), shown at 1024 px.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segearth_cli import scene as scene_module
from segearth_cli.scene import open_scene
from segearth_cli.windows import Window

DEFAULT_SCENE = Path(__file__).resolve().parents[1].parent / "shared" / "real_scenes" / "rio-tiler__cog_world.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", nargs="?", default=str(DEFAULT_SCENE))
    parser.add_argument("--window", type=int, default=8000, help="footprint side in source pixels")
    parser.add_argument("--input-size", type=int, default=1024)
    args = parser.parse_args()
    with open_scene(args.scene) as reader:
        width, height = reader.scene.width, reader.scene.height
        side = min(args.window, width, height)
        size = args.input_size
        window = Window((width - side) // 2, (height - side) // 2, side, side, size / side, size, 0, 0, size, size)
        exact, _ = reader.read(window)
        scene_module.EXACT_READ_MAX_PIXELS = 0
        read_w, read_h = scene_module.footprint_read_size(window)
        reduced, _ = reader.read(window)
    difference = np.abs(exact.astype(np.int16) - reduced.astype(np.int16))
    print(f"{Path(args.scene).name}: {side} x {side} px footprint -> {size} px canvas; "
          f"reduced read {read_w} x {read_h} px")
    print(f"canvas values differing: {100 * (difference > 0).mean():.2f} %   "
          f"max difference: {int(difference.max())} grey levels   mean: {difference.mean():.3f}")


if __name__ == "__main__":
    main()
