"""`segearth batch` reads the next scene while the current one is in the model.

A stand-in segmenter answers from the red channel; each scene carries its own constant
blue value, so a model call knows whose windows it holds. A spy on the scene reader counts
the windows read per scene. Failures and interrupts are injected into the scene that is
being read ahead, and must stay with that scene's jobs and leave nothing behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from segearth_cli.batch import (
    RECORD_SUFFIX,
    STATUS_FAILED,
    STATUS_OK,
    BatchSettings,
    group_by_scene,
    read_jobs,
    read_record,
    run_batch,
    run_scene_group,
)
from segearth_cli.errors import EXIT_FAILURE, EXIT_INPUT, InputError
from segearth_cli.query import QueryOptions
from segearth_cli.scene import SceneReader
from segearth_cli.segmenter import PixelFunctionSegmenter
from test_batch import damaged_scene, leftovers, write_jobs_csv
from test_executor import pipeline_threads
from test_interrupt import wait_until

INPUT = 64
QUESTIONS = ("where are the buildings?", "where is the water?")
IDENTITY = {"id": "red-channel", "revision": "built-in"}
#: How long a model call waits for the next scene's first window; only a missing read-ahead waits it out.
WAIT_FOR_NEXT_SCENE = 10.0


def blue_of(index: int) -> int:
    return 30 + 60 * index


def write_scene(path: Path, index: int, width: int = 200, height: int = 160) -> Path:
    rows, cols = np.mgrid[0:height, 0:width]
    red = (128 + 100 * np.sin((rows + 7 * index) / 13.0) * np.cos(cols / 17.0)).astype(np.uint8)
    green = ((rows * 3 + cols + index) % 256).astype(np.uint8)
    blue = np.full((height, width), blue_of(index), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1.0, 0.0, 400000.0 + 1000 * index, 0.0, -1.0, 5000000.0),
                       tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(np.stack([red, green, blue]))
    return path


def scene_in(windows: np.ndarray) -> int:
    """Which scene the batch comes from: its blue value (the padding is black)."""
    return (int(windows[0, 2].max()) - 30) // 60


def red_logits(windows: np.ndarray) -> np.ndarray:
    return (windows[:, 0].astype(np.float32) - 128.0) / 16.0


def make_jobs(folder: Path, scenes: list[Path], kinds=(".tif", ".geojson"), out: str = "out") -> list:
    rows = [(str(scene), question, f"{out}/{scene.stem}_q{index}{kind}")
            for scene in scenes for index, question in enumerate(QUESTIONS) for kind in kinds]
    return read_jobs(write_jobs_csv(folder / f"{out}.csv", rows))


def options(**changes) -> QueryOptions:
    return QueryOptions(**{"mode": "tiled", "window": INPUT, "batch_size": 2, "workers": 2, **changes})


def assert_nothing_left_of(jobs, out: Path) -> None:
    """No output, record, lock or temporary of ``jobs`` exists; no pipeline thread runs."""
    for job in jobs:
        for output in job.outputs:
            assert not output.exists(), output
            assert not Path(str(output) + RECORD_SUFFIX).exists(), output
    assert leftovers(out) == []
    assert pipeline_threads() == []


@pytest.fixture
def scenes(tmp_path) -> list[Path]:
    folder = tmp_path / "scenes"
    folder.mkdir()
    return [write_scene(folder / f"s{index}.tif", index) for index in range(3)]


@pytest.fixture
def reads(monkeypatch):
    """Windows read so far per scene file name, and the condition notified at each read."""
    counts: Counter = Counter()
    condition = threading.Condition()
    original = SceneReader.read

    def counting_read(self, window):
        answer = original(self, window)
        with condition:
            counts[self.path.name] += 1
            condition.notify_all()
        return answer

    monkeypatch.setattr(SceneReader, "read", counting_read)
    return counts, condition


def test_the_next_scene_is_read_while_the_current_one_is_in_the_model(tmp_path, scenes, reads):
    counts, condition = reads
    calls: list[tuple[int, bool]] = []

    class Watching(PixelFunctionSegmenter):
        """Holds the first call of each scene until the next scene has a window read."""

        def segment(self, windows, questions):
            scene = scene_in(windows)
            if scene + 1 < len(scenes) and scene not in [s for s, _ in calls]:
                following = scenes[scene + 1].name
                with condition:
                    ready = condition.wait_for(lambda: counts[following] > 0, timeout=WAIT_FOR_NEXT_SCENE)
            else:
                ready = True
            calls.append((scene, ready))
            return super().segment(windows, questions)

    jobs = make_jobs(tmp_path, scenes)
    report = run_batch(jobs, Watching(red_logits, input_size=INPUT), options(), model=IDENTITY)
    assert [r.status for r in report.results] == [STATUS_OK] * len(jobs)
    in_model = [scene for scene, _ in calls]
    assert in_model == sorted(in_model) and set(in_model) == {0, 1, 2}
    # While the first batch of scene k was in the model, scene k + 1 was already being read.
    assert all(ready for _, ready in calls), calls
    assert pipeline_threads() == []
    assert leftovers(tmp_path / "out") == []


def test_outputs_are_those_of_the_scene_groups_run_one_at_a_time(tmp_path, scenes):
    segmenter = PixelFunctionSegmenter(red_logits, input_size=INPUT)
    pipelined = make_jobs(tmp_path, scenes, out="pipelined")
    report = run_batch(pipelined, segmenter, options(), model=IDENTITY)
    assert [r.status for r in report.results] == [STATUS_OK] * len(pipelined)

    alone = make_jobs(tmp_path, scenes, out="alone")
    settings = BatchSettings(options(), IDENTITY)
    for scene, group in group_by_scene(alone):
        assert [r.status for r in run_scene_group(scene, group, settings, lambda: segmenter)] == [STATUS_OK] * 2

    for ours, theirs in zip((o for job in pipelined for o in job.outputs), (o for job in alone for o in job.outputs)):
        assert ours.name == theirs.name
        assert ours.read_bytes() == theirs.read_bytes(), ours.name
        assert read_record(ours)["inputs"] == read_record(theirs)["inputs"]


def test_a_corrupt_scene_read_ahead_fails_only_its_own_jobs(tmp_path, scenes):
    corrupt = damaged_scene(tmp_path)
    jobs = make_jobs(tmp_path, [scenes[0], corrupt, scenes[2]])
    report = run_batch(jobs, PixelFunctionSegmenter(red_logits, input_size=INPUT), options(batch_size=16),
                       model=IDENTITY)
    assert report.exit_code == EXIT_INPUT
    failed = [r for r in report.results if r.status == STATUS_FAILED]
    assert [r.job.scene for r in failed] == [corrupt, corrupt]
    assert all(r.exit_code == EXIT_INPUT and corrupt.name in r.error for r in failed)
    good = [r for r in report.results if r.status != STATUS_FAILED]
    assert [r.job.scene for r in good] == [scenes[0]] * 2 + [scenes[2]] * 2
    assert all(r.status == STATUS_OK for r in good)
    assert_nothing_left_of([r.job for r in failed], tmp_path / "out")


@pytest.mark.parametrize("method, error, code", [
    ("read", RuntimeError("the disk hiccuped"), EXIT_FAILURE),
    ("twin", InputError("s1.tif: cannot be opened a second time"), EXIT_INPUT),
], ids=["reader-thread", "reader-handle"])
def test_a_failure_while_reading_ahead_stays_with_that_scene(tmp_path, scenes, monkeypatch, method, error, code):
    original = getattr(SceneReader, method)

    def failing(self, *args):
        if self.path.name == scenes[1].name:
            raise error
        return original(self, *args)

    monkeypatch.setattr(SceneReader, method, failing)
    jobs = make_jobs(tmp_path, scenes)
    report = run_batch(jobs, PixelFunctionSegmenter(red_logits, input_size=INPUT), options(), model=IDENTITY)
    by_scene = {scene: [r for r in report.results if r.job.scene == scene] for scene in scenes}
    assert [r.status for r in by_scene[scenes[0]] + by_scene[scenes[2]]] == [STATUS_OK] * 4
    assert [(r.status, r.exit_code) for r in by_scene[scenes[1]]] == [(STATUS_FAILED, code)] * 2
    assert all(str(error) in r.error for r in by_scene[scenes[1]])
    assert report.exit_code == code
    assert_nothing_left_of([r.job for r in by_scene[scenes[1]]], tmp_path / "out")


def test_an_interrupt_stops_the_scene_read_ahead_and_releases_its_locks(tmp_path, scenes, reads):
    counts, condition = reads

    class Interrupted(PixelFunctionSegmenter):
        def segment(self, windows, questions):
            if scene_in(windows) == 1:
                with condition:
                    # Let the read-ahead of the last scene get going before Ctrl-C arrives.
                    condition.wait_for(lambda: counts[scenes[2].name] > 0, timeout=WAIT_FOR_NEXT_SCENE)
                raise KeyboardInterrupt
            return super().segment(windows, questions)

    jobs = make_jobs(tmp_path, scenes)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        run_batch(jobs, Interrupted(red_logits, input_size=INPUT), options(), model=IDENTITY,
                  on_result=finished.append)
    assert counts[scenes[2].name] > 0, "the last scene was never read ahead"
    assert [r.job.scene for r in finished] == [scenes[0]] * 2
    assert all(r.status == STATUS_OK for r in finished)
    assert_nothing_left_of([job for job in jobs if job.scene != scenes[0]], tmp_path / "out")


def test_a_rerun_with_everything_up_to_date_reads_no_window(tmp_path, scenes, reads):
    counts, _ = reads
    jobs = make_jobs(tmp_path, scenes)
    segmenter = PixelFunctionSegmenter(red_logits, input_size=INPUT)
    run_batch(jobs, segmenter, options(), model=IDENTITY)
    counts.clear()
    loads = []

    def load():
        loads.append(1)
        return segmenter

    report = run_batch(jobs, load, options(), model=IDENTITY, input_size=INPUT)
    assert {r.reason for r in report.results} == {"up to date"}
    assert counts == Counter() and loads == []


# --------------------------------------------------------------------------- Ctrl-C, as a user sends it


def test_ctrl_c_while_the_next_scene_is_read_ahead_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    # A small first scene, then two whose hundreds of windows keep tiny-random busy for minutes.
    scenes = [write_scene(folder / "s0.tif", 0, 64, 64), write_scene(folder / "s1.tif", 1, 640, 480),
              write_scene(folder / "s2.tif", 2, 640, 480)]
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", [(str(s), QUESTIONS[0], f"out/{s.stem}.tif") for s in scenes])
    report = tmp_path / "report.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "segearth_cli.cli", "batch", str(jobs_file), "--model", "tiny-random", "--device",
         "cpu", "--mode", "tiled", "--window", "32", "--batch-size", "1", "--workers", "2", "--report", str(report)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Once the first scene is done, the second one is in the model and the third one is read ahead.
    wait_until(process, lambda: report.is_file() and report.read_text().endswith("\n"), "the end of the first scene")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(line["scene"], line["status"]) for line in lines] == [(str(scenes[0]), STATUS_OK)]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["s0.tif", "s0.tif" + RECORD_SUFFIX]
    assert read_record(out / "s0.tif")["state"] == "complete"
