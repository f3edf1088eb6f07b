"""N scenes x M questions: one `segearth batch` run versus one `segearth query` call per scene-question.

Both sides are timed as a user runs them, as subprocesses from start to exit, so the batch
pays the model load once and encodes each window once for all questions of a scene, while
separate calls pay both every time. Prints seconds per scene-question for each.

    python bench/batch_bench.py                      # tiny-random, 4 scenes x 3 questions
    python bench/batch_bench.py --model earth-insights/SegEarth-R1-EarthReason --device cuda

With ``--engine ray`` it measures the Ray engine instead, in this process against a local
Ray cluster started once (its start-up is printed apart, since a cluster outlives runs):
scene-questions per second for each ``--workers`` count (each worker reserves
``--cpus-per-worker`` CPUs, or a GPU when the device is one), the scaling from the first
count to the others, and the driver's overhead per job against the local engine computing
with as many threads as one worker has.

    python bench/batch_bench.py --engine ray --workers 1,2 --scenes 8
"""

from __future__ import annotations

import argparse
import csv
import functools
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


def write_jobs(path: Path, scenes: list[Path], questions: list[str], folder: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scene", "question", "output"])
        for scene in scenes:
            for q_index, question in enumerate(questions):
                writer.writerow([scene.name, question, f"{folder}/{scene.stem}_q{q_index}.gpkg"])
    return path


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
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: batch versus separate queries (default); ray: the Ray engine's scaling")
    parser.add_argument("--workers", default="1,2", help="--engine ray: worker counts to time (default 1,2)")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="--engine ray: CPUs per worker (default 1)")
    args = parser.parse_args()
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions must be between 1 and {len(QUESTIONS)}")
    if args.engine == "ray":
        ray_main(args, [int(n) for n in args.workers.split(",")])
        return

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

        jobs = write_jobs(root / "jobs.csv", scenes, questions, "batch")
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


def ray_main(args: argparse.Namespace, worker_counts: list[int]) -> None:
    import ray
    import torch

    from segearth_cli.batch import read_jobs, run_batch
    from segearth_cli.query import QueryOptions
    from segearth_cli.ray_engine import RayCluster
    from segearth_cli.segmenter import compute_dtype, load_segmenter, model_identity

    questions = QUESTIONS[: args.questions]
    pairs = args.scenes * args.questions
    options = QueryOptions(mode=args.mode, window=args.window if args.mode == "tiled" else None)

    def timed_run(run, jobs_file: Path) -> tuple[float, float]:
        """Wall seconds of the run, and the seconds its scenes took to compute (summed over workers)."""
        jobs = read_jobs(jobs_file)
        started = time.perf_counter()
        report = run(jobs)
        seconds = time.perf_counter() - started
        if report.exit_code != 0:
            failed = next(r for r in report.results if r.error)
            sys.exit(f"failed: job {failed.job.number}: {failed.error}")
        per_scene: dict[Path, float] = {}
        for result in report.results:  # the jobs of a scene are computed together and share its seconds
            if result.status == "ok":
                per_scene[result.job.scene] = max(per_scene.get(result.job.scene, 0.0), result.seconds)
        return seconds, sum(per_scene.values())

    started = time.perf_counter()
    ray.init(address="local", object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    cluster_start = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="segearth-ray-bench-") as folder, RayCluster() as cluster:
        root = Path(folder)
        scenes = [root / f"scene_{i}.tif" for i in range(args.scenes)]
        for index, scene in enumerate(scenes):
            write_scene(scene, index, args.size)

        shapes = {n: cluster.worker_shape(args.device, n, args.cpus_per_worker) for n in worker_counts}
        device = shapes[worker_counts[0]].device
        dtype = compute_dtype(device, "float32")
        model = model_identity(args.model, dtype=dtype, task="reasoning")
        load = functools.partial(load_segmenter, args.model, revision=None, device=device, dtype="float32",
                                 task="reasoning", quiet=True)

        threads = torch.get_num_threads()
        torch.set_num_threads(args.cpus_per_worker)
        try:
            local_jobs = write_jobs(root / "local.csv", scenes, questions, "local")
            run_local = functools.partial(run_batch, segmenter=load, options=options, model=model)
            local = timed_run(run_local, local_jobs)
            local_skip, _ = timed_run(run_local, local_jobs)
        finally:
            torch.set_num_threads(threads)
        on_ray, ray_skip = {}, 0.0
        for count, shape in shapes.items():
            jobs_file = write_jobs(root / f"ray{count}.csv", scenes, questions, f"ray{count}")
            run_on_ray = functools.partial(cluster.run_batch, load=load, options=options, model=model, shape=shape)
            on_ray[count] = timed_run(run_on_ray, jobs_file)
            ray_skip, _ = timed_run(run_on_ray, jobs_file)
    ray.shutdown()

    first = worker_counts[0]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"ray {ray.__version__}, model {args.model}, device {device}")
    print(f"{args.scenes} scenes of {args.size}x{args.size} px x {args.questions} questions = {pairs} scene-questions, "
          f"mode {args.mode}" + (f", window {args.window}" if args.mode == "tiled" else ""))
    print(f"local Ray cluster start: {cluster_start:.2f} s (once; in none of the figures below)")
    print("                                   wall s  scene-questions/s  computing s (all workers)  rest s")
    rows = [(f"local engine, {args.cpus_per_worker} thread(s)", local, 1)]
    rows += [(f"ray, {count} worker(s) of {shapes[count].each()}", on_ray[count], count) for count in worker_counts]
    for name, (wall, computing), parallel in rows:
        # With several workers the computing overlaps, so wall minus computing means nothing.
        rest = f"{wall - computing:6.2f}" if parallel == 1 else "     -"
        print(f"{name:<33} {wall:8.2f}  {pairs / wall:17.2f}  {computing:25.2f}  {rest}")
    for count in worker_counts[1:]:
        print(f"scaling, {count} vs {first} worker(s): {on_ray[first][0] / on_ray[count][0]:.2f}x")
    # "rest" is the model load and the checks for the local engine; worker starts, model loads
    # and dispatch for Ray. Their difference is what the Ray engine adds around the work.
    overhead = (on_ray[first][0] - on_ray[first][1]) - (local[0] - local[1])
    print(f"overhead per job, ray {first} worker(s) vs local, outside computing: {overhead / pairs * 1000:.1f} ms; "
          f"computing per scene, ray / local: {on_ray[first][1] / local[1]:.2f}x")
    print(f"rerun with everything up to date, per job: local {local_skip / pairs * 1000:.1f} ms, "
          f"ray {ray_skip / pairs * 1000:.1f} ms")


if __name__ == "__main__":
    main()
