"""Time to first answer: whole-process wall time of one `segearth query`, as a person runs it.

Writes a 1024 x 1024 RGB GeoTIFF, then runs `segearth query SCENE QUESTION --mode whole`
as a fresh process several times and prints each run's wall time, peak RSS and the phase
timings of `--json`, then the median wall time. The first run after a model's first use
computes and stores the shared prompt head; pass --cold to empty that cache before every
run and time the very first answer instead.

    python3 bench/first_answer.py --model DIR [--runs 3] [--dtype fp32] [--device cpu] [--cold]

A full-size model needs a release directory, e.g. one written by
`python3 bench/model_cpu.py --keep DIR --repeats 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "Which part of this airport image could a small plane use for landing?"


def write_scene(path: Path, size: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    pixels = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 1, 1), tiled=True, compress="deflate")
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(pixels)


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    if finished.returncode != 0:
        raise SystemExit(f"segearth query exited {finished.returncode}:\n{finished.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # On a shared machine wall time includes waiting for a core; CPU time does not.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest child so far (KiB); runs only grow it.
    peak_gb = after.ru_maxrss * 1024 / 1e9
    return wall, cpu, peak_gb, json.loads(finished.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, hub id or tiny-random")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1024, help="side of the generated scene, pixels")
    parser.add_argument("--cold", action="store_true", help="empty the prompt-head cache before every run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="segearth-first-answer-") as work:
        work_dir = Path(work)
        scene = work_dir / "scene.tif"
        write_scene(scene, args.size)
        cache = work_dir / "cache"
        env = dict(os.environ, SEGEARTH_CACHE_DIR=str(cache))
        command = [sys.executable, "-m", "segearth_cli.cli", "query", str(scene), QUESTION, "--model", args.model,
                   "--mode", "whole", "--dtype", args.dtype, "--device", args.device, "--json", "--quiet"]
        load_before = os.getloadavg()[0]
        walls = []
        for run in range(args.runs):
            output = work_dir / f"answer{run}.tif"
            if args.cold:
                shutil.rmtree(cache, ignore_errors=True)
            wall, cpu, peak_gb, summary = run_once([*command, "-o", str(output)], env)
            walls.append(wall)
            phases = ", ".join(f"{k} {v:.2f}" for k, v in summary["timings"].items())
            print(f"run {run + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak_gb:.2f} GB; {phases}", flush=True)
        print(f"1-minute load average: {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
              f"({os.cpu_count()} cores)")
        print(f"median wall time of {args.runs} runs: {statistics.median(walls):.1f} s")


if __name__ == "__main__":
    main()
