"""Throughput and memory of the pipelined query with a stand-in model of chosen cost.

Runs ``run_query`` (readers -> stand-in segmenter -> blend -> mask GeoTIFF) over

* ``rio-tiler__cog_world.tif`` (36000 x 18000, one band, EPSG:4326) from the shared
  sample scenes (path as an argument; default ``../shared/real_scenes/`` next to the
  repository), and
* a generated 20000 x 20000 RGB scene (tiled, DEFLATE, written strip by strip into a
  temporary folder, never held in memory),

with a stand-in segmenter that costs D ms per batch of 8 windows with the GIL released
(``time.sleep`` for what filling its answers leaves of D: what a GPU looks like from the
CPU), for each D of ``--delays``. For each scene it prints the readers alone (the same
reader threads reading every window, nothing else), the segmenter alone (its own call
timed by itself: 8000 / D windows/s, or the cost of filling answers where D is less), and
end to end: windows/s, its ratio to
the slower of the two alone, megapixels per wall and per CPU second (on a shared machine
wall time includes waiting for a core) and peak resident memory. Each measurement runs
in its own process so its peak RSS (``ru_maxrss``) is its own.

    python3 bench/pipeline_bench.py [COG_WORLD_TIF] [--size 20000] [--delays 0,20,80] [--workers N]
                                    [--keep-scene PATH]

Figures only; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

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


class SleepingSegmenter:
    """Constant logits, each batch of 8 windows costing ``delay_ms`` with the GIL released.

    Like the model on a GPU it maps its answers onto the footprints itself: they come back
    as freshly filled host arrays, which costs the host what copying a GPU's answer does.
    That filling is part of the batch's ``delay_ms`` (it sleeps only for the rest), as a
    GPU's copy back is part of its time per batch: the stand-in alone then runs at exactly
    8000 / D windows/s, whichever of its calls is used.
    """

    LOGIT = -1.0

    def __init__(self, delay_ms: float, input_size: int = 1024):
        self.delay_ms = float(delay_ms)
        self.input_size = int(input_size)
        self.name = f"sleep-{delay_ms:g}ms"
        self.identity = {"id": self.name, "revision": "built-in"}
        self._plane = np.full((self.input_size, self.input_size), self.LOGIT, dtype=np.float32)

    def _sleep_rest(self, started: float, windows: int) -> None:
        rest = self.delay_ms / 1000.0 * windows / 8 - (time.perf_counter() - started)
        if rest > 0:
            time.sleep(rest)

    def segment(self, windows: np.ndarray, questions) -> np.ndarray:
        started = time.perf_counter()
        answers = np.broadcast_to(self._plane, (windows.shape[0], len(questions), self.input_size, self.input_size))
        self._sleep_rest(started, len(windows))
        return answers

    def segment_footprints(self, windows: np.ndarray, questions, footprints) -> list[np.ndarray]:
        started = time.perf_counter()
        probability = np.float32(1.0 / (1.0 + np.exp(-self.LOGIT)))
        answers = [np.full((len(questions), w.height, w.width), probability, dtype=np.float32) for w in footprints]
        self._sleep_rest(started, len(windows))
        return answers


def _usage() -> tuple[float, float]:
    """(wall seconds, CPU seconds) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def _figures(scene, windows: int, started: tuple[float, float]) -> dict:
    wall, cpu = _usage()
    seconds, cpu_seconds = wall - started[0], cpu - started[1]
    megapixels = scene.width * scene.height / 1e6
    return {
        "scene": scene.name, "size": f"{scene.width}x{scene.height}", "windows": windows,
        "seconds": round(seconds, 2), "windows_per_s": round(windows / seconds, 1),
        "mpx_per_s": round(megapixels / seconds, 1), "cpu_seconds": round(cpu_seconds, 2),
        "mpx_per_cpu_s": round(megapixels / cpu_seconds, 1),
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure_readers(scene_path: str, workers: int) -> dict:
    """Every window of the plan read by ``workers`` threads, each through its own handle, and dropped."""
    sys.path.insert(0, str(REPO))
    from segearth_cli.scene import open_scene
    from segearth_cli.windows import plan_windows

    started = _usage()
    with open_scene(scene_path) as reader:
        plan = plan_windows(reader.scene, mode="auto", input_size=1024)
        local = threading.local()
        handles = []

        def read(window) -> None:
            if not hasattr(local, "handle"):
                local.handle = reader.twin()
                handles.append(local.handle)
            local.handle.read(window)

        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(read, plan.windows):
                    pass
        finally:
            for handle in handles:
                handle.close()
        return _figures(reader.scene, len(plan), started)


def measure_query(scene_path: str, delay_ms: float, workers: int, out_dir: str) -> dict:
    """The whole query, mask GeoTIFF written, with the stand-in of ``delay_ms`` per batch of 8."""
    sys.path.insert(0, str(REPO))
    from segearth_cli.query import OutputTarget, QueryOptions, run_query
    from segearth_cli.scene import open_scene

    started = _usage()
    report = run_query(scene_path, ["bench"], [OutputTarget.for_path(Path(out_dir) / "mask.tif")],
                       SleepingSegmenter(delay_ms), QueryOptions(mode="auto", batch_size=8, workers=workers))
    with open_scene(scene_path) as reader:
        scene = reader.scene
    figures = _figures(scene, report.windows_total, started)
    figures.update(skipped=report.windows_skipped, timings=report.timings)
    return figures


def segmenter_alone(delay_ms: float) -> float:
    """Windows/s of the stand-in by itself: twenty batches of 8 full windows, answers mapped as end to end."""
    segmenter = SleepingSegmenter(delay_ms)
    batch = np.zeros((8, 3, 1024, 1024), dtype=np.uint8)
    footprints = [SimpleNamespace(height=1024, width=1024)] * 8
    started = time.perf_counter()
    for _ in range(20):
        segmenter.segment_footprints(batch, ["bench"], footprints)
    return 160 / (time.perf_counter() - started)


def run_isolated(*arguments: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="segearth-bench-out-") as out_dir:
        command = [sys.executable, __file__, *arguments, "--out-dir", out_dir]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"measurement {arguments} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scene(scene: Path, delays: list[float], workers: int) -> None:
    readers = run_isolated("--measure-readers", str(scene), "--workers", str(workers))
    print(f"{readers['scene']} ({readers['size']}, {readers['windows']} windows, {workers} reader threads)")
    print(f"  readers alone        {readers['windows_per_s']:7.1f} windows/s ({readers['seconds']:.1f} s, "
          f"{readers['cpu_seconds']:.1f} CPU-s, peak RSS {readers['peak_rss_mb']:.0f} MB)")
    for delay in delays:
        alone = segmenter_alone(delay)
        result = run_isolated("--measure-query", str(scene), "--delay", str(delay), "--workers", str(workers))
        bound = min(readers["windows_per_s"], alone)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()
                           if k in ("read", "model", "stitch", "write"))
        print(f"  D = {delay:4g} ms/batch: segmenter alone {alone:7.1f} windows/s; end to end "
              f"{result['windows_per_s']:6.1f} windows/s = {result['windows_per_s'] / bound:.2f} x min "
              f"({result['seconds']:.1f} s, {result['mpx_per_s']:.1f} Mpx/s, {result['mpx_per_cpu_s']:.1f} Mpx/CPU-s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB; thread-seconds: {phases})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", nargs="?", default=str(DEFAULT_WORLD), help="path of rio-tiler__cog_world.tif")
    parser.add_argument("--size", type=int, default=20000, help="side of the generated RGB scene")
    parser.add_argument("--delays", default="0,20,80", help="stand-in cost per batch of 8, ms, comma separated")
    parser.add_argument("--workers", type=int, help="reader threads (default: as segearth query chooses)")
    parser.add_argument("--keep-scene", metavar="PATH",
                        help="write the generated scene here and keep it (reused when it exists)")
    parser.add_argument("--measure-readers", help=argparse.SUPPRESS)
    parser.add_argument("--measure-query", help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure_readers or args.measure_query:
        sys.path.insert(0, str(REPO))
        from segearth_cli.process import share_one_malloc_arena

        # The process as `segearth` sets it up.
        share_one_malloc_arena()
    if args.measure_readers:
        print(json.dumps(measure_readers(args.measure_readers, args.workers)))
        return
    if args.measure_query:
        print(json.dumps(measure_query(args.measure_query, args.delay, args.workers, args.out_dir)))
        return

    sys.path.insert(0, str(REPO))
    from segearth_cli.executor import default_workers

    workers = args.workers or default_workers()
    delays = [float(d) for d in args.delays.split(",")]
    world = Path(args.world)
    if world.is_file():
        bench_scene(world, delays, workers)
    else:
        print(f"skipping {world}: not found", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="segearth-bench-") as folder:
        generated = Path(args.keep_scene) if args.keep_scene else Path(folder) / f"generated_rgb_{args.size}.tif"
        if not generated.exists():
            t0 = time.perf_counter()
            generate_scene(generated, args.size)
            print(f"generated {generated.name} in {time.perf_counter() - t0:.1f} s "
                  f"({generated.stat().st_size / 1e6:.0f} MB on disk)", file=sys.stderr)
        bench_scene(generated, delays, workers)


if __name__ == "__main__":
    main()
