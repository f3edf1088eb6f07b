"""`segearth batch --engine ray`: Ray for real, on a local cluster of 2 CPUs started once for the module."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segearth_cli.atomic import OutputLock
from segearth_cli.batch import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, read_jobs
from segearth_cli.segmenter import load_segmenter, model_identity
from segearth_cli.query import QueryOptions
from test_batch import damaged_scene, fingerprint, leftovers, read_report, write_jobs_csv, write_scene

QUESTIONS = ("where are the buildings?", "where is the water?", "where are the roads?")
FAST = ["--model", "tiny-random", "--device", "cpu", "--mode", "whole"]
ON_TWO_WORKERS = ["--engine", "ray", "--ray-workers", "2", "--cpus-per-worker", "1"]
load_tiny_random = functools.partial(load_segmenter, "tiny-random", revision=None, device="cpu", dtype="float32",
                                     task="reasoning", quiet=True)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray comes with the test extra: pip install -e '.[test]'")
    from segearth_cli.ray_engine import RayCluster

    # Workers unpickle the loaders this module defines; they cannot import it by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    try:
        with RayCluster() as cluster:
            yield cluster
    finally:
        ray.shutdown()


def segearth(*args) -> int:
    from segearth_cli.cli import run

    return run([str(a) for a in args])


def job_file(root: Path, folder: str, extra_rows=()) -> Path:
    """12 jobs over the 4 scenes under root/scenes, outputs in root/folder (GeoTIFF and GeoJSON alternate).

    GeoPackages are left out: they hold the time they were written, so no two are byte-identical.
    """
    rows = [(f"scenes/s{index}.tif", question, f"{folder}/s{index}_q{number}.{'tif' if number % 2 else 'geojson'}")
            for index in range(4) for number, question in enumerate(QUESTIONS)]
    return write_jobs_csv(root / f"{folder}.csv", [*rows, *extra_rows])


def outputs_by_name(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".tif", ".geojson")}


def rows_by_job(report: Path) -> dict[int, dict]:
    """Report rows without their timing, outputs named without their folder."""
    rows = {}
    for row in read_report(report):
        row = {**row, "outputs": [Path(o).name for o in row["outputs"]]}
        del row["seconds"]
        rows[row.pop("job")] = row
    return rows


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """4 scenes of different sizes and the local engine's outputs and report for their 12 jobs."""
    import torch

    root = tmp_path_factory.mktemp("ray")
    (root / "scenes").mkdir()
    for index in range(4):
        write_scene(root / "scenes" / f"s{index}.tif", seed=index, width=64 + 32 * index)
    jobs = job_file(root, "local")
    # Each Ray worker computes with one thread (it reserves one CPU); on CPU the thread count
    # changes the last bits of the probabilities, so the reference is computed the same way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = segearth("batch", jobs, *FAST, "--report", root / "local.jsonl", "--quiet")
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return root, outputs_by_name(root / "local"), rows_by_job(root / "local.jsonl")


def test_two_workers_write_the_local_engines_outputs_and_report_rows_and_skip_a_local_runs_work(ray_cluster,
                                                                                                local_run):
    root, local_outputs, local_rows = local_run
    assert len(local_rows) == 12 and {row["status"] for row in local_rows.values()} == {STATUS_OK}

    local_files = {p: fingerprint(p) for p in (root / "local").iterdir()}
    code = segearth("batch", root / "local.csv", *FAST, *ON_TWO_WORKERS, "--report", root / "rerun.jsonl")
    assert code == 0
    rerun = rows_by_job(root / "rerun.jsonl")
    assert {(row["status"], row["reason"]) for row in rerun.values()} == {(STATUS_SKIPPED, "up to date")}
    assert sorted(rerun) == sorted(local_rows)
    assert {p: fingerprint(p) for p in (root / "local").iterdir()} == local_files

    code = segearth("batch", job_file(root, "ray"), *FAST, *ON_TWO_WORKERS, "--report", root / "ray.jsonl")
    assert code == 0
    assert outputs_by_name(root / "ray") == local_outputs
    assert rows_by_job(root / "ray.jsonl") == local_rows
    assert leftovers(root / "ray") == []


class KillsItsWorkerOnce:
    """tiny-random, except that the first call in the whole run kills its own Ray worker (``ray.kill``) mid-scene."""

    def __init__(self, marker: Path):
        self.inner = load_tiny_random()
        self.name, self.input_size = self.inner.name, self.inner.input_size
        self.marker = marker

    def segment(self, windows, questions):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return self.inner.segment(windows, questions)
        import ray

        ray.kill(ray.get_runtime_context().current_actor)
        time.sleep(60)  # the kill lands while the scene's outputs are half written
        raise AssertionError("the worker outlived ray.kill")


def run_on_workers(cluster, jobs: Path, load, workers: int = 2):
    from segearth_cli.ray_engine import WorkerShape

    identity = model_identity("tiny-random", dtype="float32", task="reasoning")
    return cluster.run_batch(read_jobs(jobs), load, QueryOptions(mode="whole"), model=identity,
                             shape=WorkerShape(count=workers, cpus=1, gpus=0, device="cpu"))


def test_a_worker_killed_mid_scene_has_its_scene_redone_elsewhere_with_every_output_whole(ray_cluster, local_run):
    root, local_outputs, _ = local_run
    marker = root / "killed.marker"
    report = run_on_workers(ray_cluster, job_file(root, "killed"), functools.partial(KillsItsWorkerOnce, marker))
    assert marker.exists(), "no worker was killed"
    assert len(report.results) == 12 and report.counts()[STATUS_OK] == 12 and report.exit_code == 0
    assert outputs_by_name(root / "killed") == local_outputs
    # The killed worker's hidden temporaries, locks and pending records were cleared by the retry.
    assert leftovers(root / "killed") == []
    assert all(json.loads(r.read_text())["state"] == "complete" for r in (root / "killed").glob("*.segearth.json"))


def test_an_output_locked_by_another_process_is_left_to_it(ray_cluster, local_run, tmp_path):
    # Another driver's worker holds the lock while it computes: the same lock, from another process.
    root, _, _ = local_run
    jobs = write_jobs_csv(tmp_path / "jobs.csv", [(root / "scenes" / "s1.tif", question, f"out/{index}.tif")
                                                  for index, question in enumerate(QUESTIONS[:2])])
    (tmp_path / "out").mkdir()
    with OutputLock(tmp_path / "out" / "1.tif"):
        report = run_on_workers(ray_cluster, jobs, load_tiny_random, workers=1)
    assert [(r.status, (r.reason or "").split(":")[0]) for r in report.results] == [
        (STATUS_OK, ""), (STATUS_SKIPPED, "locked by another run")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.tif", "0.tif.segearth.json"]


def test_a_corrupt_scene_fails_its_jobs_alone(ray_cluster, local_run, tmp_path):
    root, _, _ = local_run
    corrupt = damaged_scene(tmp_path)
    write_scene(root / "scenes" / "big.tif", seed=9, width=300, height=300)
    jobs = write_jobs_csv(tmp_path / "jobs.csv", [
        (root / "scenes" / "big.tif", QUESTIONS[0], "out/big.tif"),
        (corrupt, QUESTIONS[0], "out/corrupt.tif"),
        (corrupt, QUESTIONS[1], "out/corrupt_water.geojson"),
        (root / "scenes" / "s0.tif", QUESTIONS[1], "out/s0.geojson"),
    ])
    # Tiled at full resolution, as in test_batch: the damaged tiles are read, not the overviews.
    code = segearth("batch", jobs, "--model", "tiny-random", "--device", "cpu", "--mode", "tiled", "--window",
                       "256", "--overlap", "0", "--batch-size", "16", *ON_TWO_WORKERS, "--report",
                       tmp_path / "report.jsonl")
    assert code == 3
    rows = {row["outputs"][0]: row for row in read_report(tmp_path / "report.jsonl")}
    failed = {Path(o).name for o, row in rows.items() if row["status"] == STATUS_FAILED}
    assert failed == {"corrupt.tif", "corrupt_water.geojson"}
    assert all(rows[o]["exit_code"] == 3 and corrupt.name in rows[o]["error"] for o in rows if Path(o).name in failed)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.endswith(".segearth.json")) == \
        ["big.tif", "s0.geojson"]


def test_worker_shapes_follow_the_cluster_and_refuse_what_it_cannot_hold(ray_cluster):
    from segearth_cli.errors import UsageError
    from segearth_cli.ray_engine import WorkerShape

    assert ray_cluster.worker_shape("auto", None, None) == WorkerShape(count=1, cpus=2, gpus=0, device="cpu")
    assert ray_cluster.worker_shape("cpu", 2, None) == WorkerShape(count=2, cpus=1, gpus=0, device="cpu")
    for device, workers, cpus, complaint in [("cuda", None, None, "--device cuda: the Ray cluster has no GPU"),
                                             ("cuda:1", None, None, "--device cuda:1"),
                                             ("cpu", 1, 3, "--cpus-per-worker 3: no node")]:
        with pytest.raises(UsageError, match=complaint):
            ray_cluster.worker_shape(device, workers, cpus)


def test_without_ray_the_engine_exits_2_with_the_install_command(tmp_path):
    write_scene(tmp_path / "a.tif", seed=1)
    jobs = write_jobs_csv(tmp_path / "jobs.csv", [("a.tif", QUESTIONS[0], "out/a.tif")])
    script = ("import sys; sys.modules['ray'] = None\n"
              "from segearth_cli.cli import main\n"
              f"main(['batch', {str(jobs)!r}, '--model', 'tiny-random', '--engine', 'ray', '--report', "
              f"{str(tmp_path / 'report.jsonl')!r}])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "segearth: error: --engine ray needs Ray, which is not installed; install it with: pip install 'segearth[ray]'"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "jobs.csv"]


@pytest.mark.parametrize(("address", "expected"), [("", "'--address': empty"), ("abc", "expected HOST:PORT")])
def test_an_address_that_names_no_cluster_is_a_usage_error(tmp_path, address, expected):
    write_scene(tmp_path / "a.tif", seed=1)
    jobs = write_jobs_csv(tmp_path / "jobs.csv", [("a.tif", QUESTIONS[0], "out/a.tif")])
    # A process of its own: this one may already be connected to the tests' cluster, which a
    # driver then uses as it is.
    script = ("from segearth_cli.cli import main\n"
              f"main(['batch', {str(jobs)!r}, '--model', 'tiny-random', '--engine', 'ray', '--address', {address!r}])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "jobs.csv"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="descendants are found through /proc")
def test_processes_the_cluster_started_do_not_outlive_its_shutdown():
    """Agents a raylet was still starting when Ctrl-C came outlived ray.shutdown(), re-parented to init."""
    from types import SimpleNamespace

    from segearth_cli.ray_engine import _shutdown_with_descendants

    # A child that starts a grandchild and exits at shutdown, as a raylet does: the grandchild is the agent.
    raylet = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "agent = subprocess.Popen(['sleep', '300']); print(agent.pid, flush=True)\n"
                               "time.sleep(300)\n"], stdout=subprocess.PIPE, text=True)
    agent = int(raylet.stdout.readline())
    _shutdown_with_descendants(SimpleNamespace(shutdown=raylet.kill))
    raylet.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{agent}") and \
            open(f"/proc/{agent}/stat").read().split(")")[1].split()[0] != "Z":
        time.sleep(0.05)
    alive = os.path.exists(f"/proc/{agent}") and open(f"/proc/{agent}/stat").read().split(")")[1].split()[0] != "Z"
    assert not alive
