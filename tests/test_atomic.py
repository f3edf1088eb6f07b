"""Outputs appear complete at their targets or not at all (atomic.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from segearth_cli.atomic import (
    AtomicOutputs,
    OutputLock,
    Terminated,
    TerminationHandler,
    folder_write_problem,
    remove_stale_temps,
    temp_name_for,
    write_atomically,
)
from segearth_cli.errors import EXIT_OUTPUT, OutputError, UsageError
from segearth_cli.outputs.raster import MaskRasterSink
from segearth_cli.scene import Scene
from segearth_cli.stitch import RowBlock

REPO = Path(__file__).resolve().parents[1]


def make_scene(width=600, height=700):
    return Scene(
        path=Path("scene.tif"), width=width, height=height, count=3, dtype="uint8", crs=CRS.from_epsg(32631),
        transform=Affine(2.0, 0, 500000, 0, -2.0, 4000000), georeferencing="transform", warped=False,
        bands=(1, 2, 3), colour="rgb", stretch=None, nodata=None, validity="none",
    )


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_commit_renames_every_temp_onto_its_target(tmp_path):
    targets = [tmp_path / "mask.tif", tmp_path / "answer.gpkg"]
    with AtomicOutputs(targets, overwrite=False) as outputs:
        temps = [outputs.temp_path(t) for t in targets]
        for temp, target in zip(temps, targets):
            assert temp.parent == target.parent
            assert temp.name.startswith(".") and temp.suffix == target.suffix
            assert f".segearth-{os.getpid()}-" in temp.name
            temp.write_text(target.name)
        assert listing(tmp_path) == {t.name for t in temps}
    assert listing(tmp_path) == {"mask.tif", "answer.gpkg"}
    assert (tmp_path / "mask.tif").read_text() == "mask.tif"


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_target_and_no_temp(tmp_path, failure):
    target = tmp_path / "mask.tif"
    with pytest.raises(type(failure)):
        with AtomicOutputs([target]) as outputs:
            temp = outputs.temp_path(target)
            temp.write_bytes(b"partial")
            Path(f"{temp}.stage-mask.tif").write_bytes(b"staging")
            raise failure
    assert listing(tmp_path) == set()


def test_raster_sink_failing_part_way_leaves_nothing(tmp_path):
    scene = make_scene()
    target = tmp_path / "mask.tif"
    probabilities = np.full((1, 100, scene.width), 0.7, dtype=np.float32)
    valid = np.ones((100, scene.width), dtype=bool)
    with pytest.raises(RuntimeError):
        with AtomicOutputs([target]) as outputs:
            sink = MaskRasterSink(outputs[target], scene, ["q"], cog=True, probabilities=True)
            sink.write(RowBlock(0, probabilities, valid))
            sink.write(RowBlock(100, probabilities, valid))
            raise RuntimeError("the model crashed")
    assert listing(tmp_path) == set()


def test_existing_target_needs_overwrite(tmp_path):
    target = tmp_path / "mask.tif"
    target.write_text("old")
    with pytest.raises(OutputError) as caught:
        AtomicOutputs([target], overwrite=False)
    assert caught.value.exit_code == EXIT_OUTPUT == 5
    assert str(target) in str(caught.value) and "--overwrite" in str(caught.value)
    assert target.read_text() == "old"

    with AtomicOutputs([target], overwrite=True) as outputs:
        outputs[target].write_text("new")
    assert target.read_text() == "new"
    assert listing(tmp_path) == {"mask.tif"}


def test_unwritable_targets_are_refused_before_any_work(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        AtomicOutputs([tmp_path / "missing" / "mask.tif"])
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        AtomicOutputs([tmp_path / "folder.tif"])
    with pytest.raises(UsageError):
        AtomicOutputs([tmp_path / "a.tif", tmp_path / "." / "a.tif"])


def test_an_unwritable_folder_is_found_by_trying_even_for_root(unwritable_folder, tmp_path):
    assert folder_write_problem(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"]  # the probe is gone
    assert folder_write_problem(unwritable_folder) is not None
    with pytest.raises(OutputError, match="locked is not writable"):
        AtomicOutputs([unwritable_folder / "mask.tif"])


def test_sigterm_becomes_a_clean_exception(tmp_path):
    target = tmp_path / "mask.tif"
    handler = TerminationHandler()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Terminated):
            with AtomicOutputs([target]) as outputs:
                outputs[target].write_bytes(b"partial")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handler.received
    assert issubclass(Terminated, KeyboardInterrupt)
    assert listing(tmp_path) == set()


def test_sigkill_leaves_only_hidden_temps_that_are_removed_later(tmp_path):
    target = tmp_path / "mask.tif"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from segearth_cli.atomic import AtomicOutputs
        target = Path({str(target)!r})
        with AtomicOutputs([target]) as outputs:
            outputs[target].write_bytes(b"partial")
            print("written", flush=True)
            time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not target.exists()
    leftovers = listing(tmp_path)
    assert len(leftovers) == 1 and next(iter(leftovers)).startswith(".mask.tif.segearth-")

    alive = temp_name_for(tmp_path / "other.tif")  # this process is alive: kept
    alive.write_bytes(b"in progress")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == list(leftovers)
    assert listing(tmp_path) == {alive.name}


def test_output_lock_is_exclusive_and_removed_after(tmp_path):
    output = tmp_path / "mask.tif"
    with OutputLock(output) as lock:
        assert lock.is_locked and (tmp_path / "mask.tif.lock").exists()
        with pytest.raises(OutputError) as caught:
            OutputLock(output, wait=False).acquire()
        assert caught.value.exit_code == EXIT_OUTPUT and "mask.tif" in str(caught.value)
    assert listing(tmp_path) == set()
    with OutputLock(output, wait=True):
        pass
    assert listing(tmp_path) == set()


def test_output_lock_waits_for_another_process(tmp_path):
    output = tmp_path / "mask.tif"
    script = textwrap.dedent(
        f"""
        import time
        from segearth_cli.atomic import OutputLock
        with OutputLock({str(output)!r}):
            print("locked", flush=True)
            time.sleep(1.0)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError):
            OutputLock(output, wait=False).acquire()
        with OutputLock(output, wait=True) as lock:  # blocks until the child lets go
            assert child.wait(timeout=30) == 0
            assert lock.is_locked
    finally:
        if child.poll() is None:
            child.kill()
    assert listing(tmp_path) == set()


def test_nothing_is_committed_when_one_output_was_never_written(tmp_path):
    targets = [tmp_path / "mask.tif", tmp_path / "answer.gpkg"]
    with pytest.raises(OutputError, match="answer.gpkg: nothing was written"):
        with AtomicOutputs(targets) as outputs:
            outputs[targets[0]].write_bytes(b"complete")
    assert listing(tmp_path) == set()


def test_write_atomically_replaces_whole_or_leaves_nothing(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    write_atomically(target, '{"state": "complete"}\n')
    assert target.read_text() == '{"state": "complete"}\n'
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert listing(tmp_path) == {"record.json"}

    missing = tmp_path / "no_such_folder" / "rows.csv"
    with pytest.raises(OutputError) as caught:
        write_atomically(missing, "a,b\n")
    assert caught.value.exit_code == EXIT_OUTPUT and str(missing) in str(caught.value)
    assert listing(tmp_path) == {"record.json"}


def run_without_fcntl(body: str, msvcrt_stand_in: bool) -> subprocess.CompletedProcess:
    """Run ``body`` in a Python where ``import fcntl`` fails, as on Windows.

    With ``msvcrt_stand_in`` an ``msvcrt`` module is provided whose byte-range lock is
    emulated with flock (whole file, per open file), enough to exercise the Windows path.
    """
    prelude = textwrap.dedent(
        """
        import sys, types
        if {stand_in}:
            import fcntl as real_fcntl

            msvcrt = types.ModuleType("msvcrt")
            msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2

            def locking(fd, mode, nbytes):
                if mode == msvcrt.LK_UNLCK:
                    real_fcntl.flock(fd, real_fcntl.LOCK_UN)
                    return
                try:
                    real_fcntl.flock(fd, real_fcntl.LOCK_EX | real_fcntl.LOCK_NB)
                except BlockingIOError:
                    raise PermissionError(13, "Permission denied") from None

            msvcrt.locking = locking
            sys.modules["msvcrt"] = msvcrt
        else:
            sys.modules["msvcrt"] = None
        sys.modules["fcntl"] = None
        """
    ).format(stand_in=msvcrt_stand_in)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_help_works_where_fcntl_does_not_exist():
    done = run_without_fcntl(
        """
        from segearth_cli.cli import run
        status = run(["--help"])
        try:
            import fcntl
        except ImportError:
            print("no fcntl")
        print("status", status)
        """,
        msvcrt_stand_in=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no fcntl" in done.stdout and "status 0" in done.stdout
    assert "segearth query scene.tif" in done.stdout


def test_output_lock_without_fcntl_uses_msvcrt(tmp_path):
    output = tmp_path / "mask.tif"
    done = run_without_fcntl(
        f"""
        import threading, time
        from pathlib import Path
        from segearth_cli.atomic import OutputLock
        from segearth_cli.errors import OutputError
        output = Path({str(output)!r})
        first = OutputLock(output).acquire()
        try:
            OutputLock(output, wait=False).acquire()
            print("second lock taken")
        except OutputError as error:
            print("busy:", error)
        print("lock file while held:", output.with_name("mask.tif.lock").exists())
        threading.Timer(0.3, first.release).start()
        with OutputLock(output, wait=True) as waited:
            print("waited:", waited.is_locked, first.is_locked)
        print("lock file after:", output.with_name("mask.tif.lock").exists())
        """,
        msvcrt_stand_in=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"busy: {output}: another segearth run is writing it (lock mask.tif.lock)",
        "lock file while held: True",
        "waited: True False",
        "lock file after: False",
    ]


def test_output_lock_without_any_lock_module_says_so(tmp_path):
    done = run_without_fcntl(
        f"""
        from segearth_cli.atomic import OutputLock
        from segearth_cli.errors import OutputError
        try:
            OutputLock({str(tmp_path / "mask.tif")!r}).acquire()
        except OutputError as error:
            print(error.exit_code, error)
        """,
        msvcrt_stand_in=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"5 {tmp_path / 'mask.tif'}: this system offers no file locks (neither fcntl nor msvcrt)"
    assert listing(tmp_path) == set()
