"""N scenes x M questions: one `segearth batch` run versus one `segearth query` call per scene-question.

Both sides are timed as a user runs them, as subprocesses from start to exit, so the batch
pays the model load once and encodes each window once for all questions of a scene, while
separate calls pay both every time. Prints seconds per scene-question for each.

    python bench/batch_bench.py                      # tiny-random, 4 scenes x 3 questions
    python bench/batch_bench.py --model earth-insights/SegEarth-R1-EarthReason --device cuda
"""

from __future__ import annotations

import argparse
import csv
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

QUESTIONS = [
    "where are the buildings?",
    "where is the water?",
    "which areas could be used to land a helicopter?",
    "where are the roads?",
    "where could flood relief camps be placed?",
    "where are the trees?",
]


def write_scene(path: Path, seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than noise, so the vector stage has real polygons to write.
    coarse = rng.integers(0, 256, size=(3, size // 32 + 1, size // 32 + 1)).astype(np.uint8)
    pixels = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :size, :size]
    transform = Affine(0.5, 0.0, 400000.0 + seed * 10000, 0.0, -0.5, 5000000.0)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", tiled=True,
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(pixels)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4, help="N scenes (default 4)")
    parser.add_argument("--questions", type=int, default=3, help=f"M questions, at most {len(QUESTIONS)} (default 3)")
    parser.add_argument("--size", type=int, default=512, help="scene side in pixels (default 512)")
    parser.add_argument("--model", default="tiny-random", help="model for both sides (default tiny-random)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="tiled", help="window mode for both sides (default tiled)")
    parser.add_argument("--window", type=int, default=256, help="tiled window in source pixels (default 256)")
    args = parser.parse_args()
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions must be between 1 and {len(QUESTIONS)}")

    segearth = [sys.executable, "-m", "segearth_cli.cli"]
    common = ["--model", args.model, "--device", args.device, "--mode", args.mode, "--quiet"]
    if args.mode == "tiled":
        common += ["--window", str(args.window)]
    questions = QUESTIONS[: args.questions]
    pairs = args.scenes * args.questions

    with tempfile.TemporaryDirectory(prefix="segearth-batch-bench-") as folder:
        root = Path(folder)
        scenes = [root / f"scene_{i}.tif" for i in range(args.scenes)]
        for index, scene in enumerate(scenes):
            write_scene(scene, index, args.size)

        jobs = root / "jobs.csv"
        with jobs.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["scene", "question", "output"])
            for scene in scenes:
                for q_index, question in enumerate(questions):
                    writer.writerow([scene.name, question, f"batch/{scene.stem}_q{q_index}.gpkg"])
        batch_seconds = timed([*segearth, "batch", str(jobs), *common])

        separate_seconds = 0.0
        for scene in scenes:
            for q_index, question in enumerate(questions):
                output = root / "separate" / f"{scene.stem}_q{q_index}.gpkg"
                output.parent.mkdir(exist_ok=True)
                separate_seconds += timed([*segearth, "query", str(scene), question, "-o", str(output), *common])

        rerun_seconds = timed([*segearth, "batch", str(jobs), *common])

    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"model {args.model}, device {args.device}")
    print(f"{args.scenes} scenes of {args.size}x{args.size} px x {args.questions} questions = {pairs} scene-questions, "
          f"mode {args.mode}" + (f", window {args.window}" if args.mode == "tiled" else ""))
    print(f"one batch run:          {batch_seconds:8.2f} s total  {batch_seconds / pairs:7.3f} s per scene-question")
    print(f"separate query calls:   {separate_seconds:8.2f} s total  {separate_seconds / pairs:7.3f} s per scene-question")
    print(f"batch rerun (all skip): {rerun_seconds:8.2f} s total  {rerun_seconds / pairs:7.3f} s per scene-question")
    print(f"separate / batch: {separate_seconds / batch_seconds:.1f}x")


if __name__ == "__main__":
    main()
