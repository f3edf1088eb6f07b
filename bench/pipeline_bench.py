"""Throughput and memory of the pipeline core with a near-free stand-in model.

Runs read -> window -> (constant segmenter) -> blend -> mask GeoTIFF write over

* ``rio-tiler__cog_world.tif`` (36000 x 18000, one band, EPSG:4326) from the shared
  sample scenes (path as an argument; default ``../shared/real_scenes/`` next to the
  repository), and
* a generated 20000 x 20000 RGB scene (tiled, DEFLATE, written strip by strip into a
  temporary folder, never held in memory),

and prints megapixels per second (per wall-clock second and per CPU second: on a shared
machine the first includes waiting for a core) and peak resident memory. Each measurement runs in its own
process so its peak RSS (``ru_maxrss``) is its own and not the scene generator's.

    python3 bench/pipeline_bench.py [COG_WORLD_TIF] [--no-write] [--prefetch] [--size 20000] [--keep-scene PATH]

Figures only; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORLD = REPO.parent / "shared" / "real_scenes" / "rio-tiler__cog_world.tif"


def generate_scene(path: Path, size: int) -> None:
    """An RGB scene with texture at several scales, written 512 rows at a time."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", tiled=True, blockxsize=512,
        blockysize=512, compress="deflate", crs="EPSG:32633", transform=from_origin(300_000, 5_000_000, 0.5, 0.5),
        bigtiff="IF_SAFER",
    )
    cols = np.arange(size, dtype=np.int64)
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 24, size=(512, size), dtype=np.uint8)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, size, 512):
            rows = np.arange(row0, min(size, row0 + 512), dtype=np.int64)[:, None]
            n = rows.shape[0]
            fields = (((cols // 97) ^ (rows // 89)) & 0x3F).astype(np.uint8) * 3  # fields and parcels
            roads = (((cols % 1500) < 12) | ((rows % 1700) < 10)).astype(np.uint8) * 90
            block = np.empty((3, n, size), dtype=np.uint8)
            block[0] = fields + roads + noise[:n]
            block[1] = fields // 2 + 60 + roads + noise[:n]
            block[2] = 40 + roads + noise[:n] // 2
            dst.write(block, window=rasterio.windows.Window(0, row0, size, n))


def measure(scene_path: str, write: bool, out_dir: str, prefetch: bool = False) -> dict:
    """One run in this process: returns seconds, megapixels, Mpx/s and peak RSS."""
    sys.path.insert(0, str(REPO))
    from read_ahead import ReadAhead
    from segearth_cli.scene import open_scene
    from segearth_cli.segmenter import ConstantSegmenter
    from segearth_cli.stitch import stream_row_blocks
    from segearth_cli.windows import plan_windows

    sink = None
    counts = {"windows": 0, "skipped": 0}

    def count(window, ran):
        counts["windows"] += 1
        counts["skipped"] += 0 if ran else 1

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    with open_scene(scene_path) as reader:
        scene = reader.scene
        segmenter = ConstantSegmenter(value=-1.0, input_size=1024)
        plan = plan_windows(scene, mode="auto", input_size=segmenter.input_size)
        if write:
            from segearth_cli.outputs.raster import MaskRasterSink

            sink = MaskRasterSink(Path(out_dir) / "mask.tif", scene, ["bench"], threshold=0.5)
        rows = 0
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(ReadAhead(reader, plan.windows)) if prefetch else reader
            for block in stream_row_blocks(source, plan, segmenter, ["bench"], batch_size=4, on_window=count):
                rows += block.height
                if sink is not None:
                    sink.write(block)
        if sink is not None:
            sink.close()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_start
    assert rows == scene.height
    megapixels = scene.width * scene.height / 1e6
    return {
        "scene": Path(scene_path).name,
        "size": f"{scene.width}x{scene.height}",
        "plan": f"{plan.mode} {len(plan)} windows, footprint {plan.footprint}, overlap {plan.overlap}",
        "windows_skipped": counts["skipped"],
        "write": bool(write),
        "prefetch": bool(prefetch),
        "seconds": round(seconds, 2),
        "megapixels": round(megapixels, 1),
        "mpx_per_s": round(megapixels / seconds, 1),
        # On a shared machine wall time includes waiting for a CPU; CPU time does not.
        "cpu_seconds": round(cpu_seconds, 2),
        "mpx_per_cpu_s": round(megapixels / cpu_seconds, 1),
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_isolated(scene: Path, write: bool, prefetch: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="segearth-bench-out-") as out_dir:
        command = [sys.executable, __file__, "--measure", str(scene), "--out-dir", out_dir]
        if not write:
            command.append("--no-write")
        if prefetch:
            command.append("--prefetch")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"measurement of {scene} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", nargs="?", default=str(DEFAULT_WORLD), help="path of rio-tiler__cog_world.tif")
    parser.add_argument("--size", type=int, default=20000, help="side of the generated RGB scene")
    parser.add_argument("--no-write", action="store_true", help="skip the mask GeoTIFF write")
    parser.add_argument("--keep-scene", metavar="PATH",
                        help="write the generated scene here and keep it (reused when it exists)")
    parser.add_argument("--prefetch", action="store_true", help="read the next window in a background thread")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    write = not args.no_write

    if args.measure:
        print(json.dumps(measure(args.measure, write, args.out_dir, args.prefetch)))
        return

    results = []
    world = Path(args.world)
    if world.is_file():
        results.append(run_isolated(world, write, args.prefetch))
    else:
        print(f"skipping {world}: not found", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="segearth-bench-") as folder:
        generated = Path(args.keep_scene) if args.keep_scene else Path(folder) / f"generated_rgb_{args.size}.tif"
        if not generated.exists():
            t0 = time.perf_counter()
            generate_scene(generated, args.size)
            print(f"generated {generated.name} in {time.perf_counter() - t0:.1f} s "
                  f"({generated.stat().st_size / 1e6:.0f} MB on disk)", file=sys.stderr)
        results.append(run_isolated(generated, write, args.prefetch))
    for result in results:
        print(
            f"{result['scene']:<32} {result['size']:>12}  {result['mpx_per_s']:7.1f} Mpx/s wall "
            f"({result['seconds']:.1f} s)  {result['mpx_per_cpu_s']:7.1f} Mpx/CPU-s ({result['cpu_seconds']:.1f} s)  "
            f"peak RSS {result['peak_rss_mb']:7.1f} MB  "
            f"write={'yes' if result['write'] else 'no'}  prefetch={'yes' if result['prefetch'] else 'no'}  "
            f"[{result['plan']}, {result['windows_skipped']} skipped]"
        )


if __name__ == "__main__":
    main()
