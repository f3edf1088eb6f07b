"""Killing a running query part-way leaves nothing at the target paths, and a re-run completes.

The query runs as a real process on a scene cut into hundreds of small windows, so it is
still working when the signal arrives: the signal is sent once its temporary files exist
(the model is loaded and the window loop has started).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import geopandas
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

TARGETS = ("answer.tif", "answer.gpkg", "answer.geojson")
COMMAND = [sys.executable, "-c", "from segearth_cli.cli import main; main()"]


@pytest.fixture
def scene(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "many_windows.tif"
    rows, cols = np.mgrid[0:480, 0:640]
    data = np.stack([(rows * 7 + cols * 3) % 256, (rows * 2 + cols * 5) % 256, (rows + cols) % 256]).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=640, height=480, count=3, dtype="uint8",
                       crs=CRS.from_epsg(32633), transform=Affine(1, 0, 400000, 0, -1, 5000000)) as dst:
        dst.write(data)
    return path


def start_query(scene: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [*COMMAND, "query", str(scene), "what is here?", "--model", "tiny-random", *extra]
    for name in TARGETS:
        args += ["-o", str(out / name)]
    # A shell that starts the tests in the background ignores SIGINT, and the child would
    # inherit that; the default disposition makes Python turn SIGINT into KeyboardInterrupt.
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".segearth-" in p.name]


def wait_until(process: subprocess.Popen, under_way: Callable[[], bool], what: str) -> None:
    """Until ``under_way()`` says the run got far enough (``what`` names that point), and a moment more."""
    deadline = time.monotonic() + 240
    while not under_way():
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run never got to {what}")
        time.sleep(0.05)
    # Let some windows go through the model before the signal.
    time.sleep(1.5)
    assert process.poll() is None, "the run finished before the signal; it needs more windows"


def wait_until_running(process: subprocess.Popen, out: Path) -> None:
    """Until the run has created its temporaries (model loaded, windows under way)."""
    wait_until(process, lambda: bool(temporaries(out)), "writing its outputs")


# Hundreds of 32-pixel windows: tiny-random needs well over a minute for them all; several
# reader threads, so the signal meets a pipelined run with every stage busy.
SLOW = ("--mode", "tiled", "--window", "32", "--batch-size", "1", "--workers", "3")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_polite_interruption_removes_every_temporary(scene, tmp_path, signum, code):
    out = tmp_path / "out"
    out.mkdir()
    process = start_query(scene, out, *SLOW)
    wait_until_running(process, out)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("segearth: error:")] == [
        f"segearth: error: {'interrupted' if signum == signal.SIGINT else 'terminated'}; partial outputs removed"
    ]
    assert list(out.iterdir()) == []


def test_sigkill_leaves_nothing_at_the_targets_and_a_rerun_completes(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    process = start_query(scene, out, *SLOW)
    wait_until_running(process, out)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    for name in TARGETS:
        assert not (out / name).exists()
    # Whatever survived is a hidden temporary, never a file at a target path.
    assert all(p.name.startswith(".") and ".segearth-" in p.name for p in out.iterdir())

    rerun = subprocess.run(
        [*COMMAND, "query", str(scene), "what is here?", "--model", "tiny-random", "--mode", "whole", "--json",
         *[arg for name in TARGETS for arg in ("-o", str(out / name))]],
        capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["windows_run"] == 1
    # The killed run's temporaries were cleared away by the re-run.
    assert sorted(p.name for p in out.iterdir()) == sorted(TARGETS)
    with rasterio.open(out / "answer.tif") as ds:
        assert (ds.width, ds.height, ds.crs) == (640, 480, CRS.from_epsg(32633))
        assert set(np.unique(ds.read(1)).tolist()) <= {0, 1, 255}
    assert len(geopandas.read_file(out / "answer.gpkg")) == summary["questions"][0]["polygons"]
    assert len(geopandas.read_file(out / "answer.geojson")) == summary["questions"][0]["polygons"]
    assert os.listdir(scene.parent) == [scene.name]
