"""The `segearth` command line: exit codes, messages, the JSON summary, registered commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

import segearth_cli
from segearth_cli import cli

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

QUERY_OPTIONS = [
    "--output", "--question", "--model", "--revision", "--device", "--dtype", "--batch-size", "--task", "--mode",
    "--window", "--gsd", "--overlap", "--bands", "--threshold", "--min-area", "--simplify", "--probabilities",
    "--cog", "--overwrite", "--pixel-coordinates", "--json", "--quiet", "--debug",
]


def invoke(capsys, *args) -> tuple[int, str, str]:
    code = cli.run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("segearth: error:")]


def assert_one_error_line(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def scene(tmp_path) -> Path:
    path = tmp_path / "scene.tif"
    data = np.zeros((3, 150, 200), np.uint8)
    data[0] = np.arange(200, dtype=np.uint8)[None, :]
    data[1] = 90
    data[2, 40:100, 50:150] = 200
    with rasterio.open(path, "w", driver="GTiff", width=200, height=150, count=3, dtype="uint8",
                       crs=CRS.from_epsg(32633), transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as dst:
        dst.write(data)
    return path


@pytest.fixture
def nodata_scene(tmp_path) -> Path:
    path = tmp_path / "nothing.tif"
    with rasterio.open(path, "w", driver="GTiff", width=120, height=80, count=3, dtype="uint8", nodata=0,
                       crs=CRS.from_epsg(32633), transform=Affine(1, 0, 500000, 0, -1, 4000000)) as dst:
        dst.write(np.zeros((3, 80, 120), np.uint8))
    return path


def test_version(capsys):
    code, out, _ = invoke(capsys, "--version")
    assert code == 0
    assert out.strip() == f"segearth {segearth_cli.__version__}"


def test_help_has_a_worked_example_and_every_command(capsys):
    code, out, _ = invoke(capsys, "--help")
    assert code == 0
    assert 'segearth query scene.tif "where could flood relief camps be placed?"' in out
    assert "--model tiny-random" in out
    for command in ("query", "batch", "eval", "models", "doctor"):
        assert command in out


def test_query_help_lists_every_option(capsys):
    code, out, _ = invoke(capsys, "query", "--help")
    assert code == 0
    for option in QUERY_OPTIONS:
        assert option in out, option
    assert "earth-insights/SegEarth-R1-EarthReason" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["query"], None),
        (["query", "{scene}"], "QUESTION"),
        (["query", "{scene}", "q"], "--output"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--bogus"], "--bogus"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--model", ""], "'--model' / '-m' (env var: 'SEGEARTH_MODEL'): empty"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--model", "tiny-random", "--revision", " "], "'--revision': empty"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--model", "tiny-random", "--device", "cuda:" + "9" * 20],
         "beyond any machine"),
        (["query", "{scene}", "\u200b\ufeff ", "-o", "{tmp}/a.tif", "--model", "tiny-random"], "a question is empty"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--threshold", "1.5"], "--threshold"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--batch-size", "0"], "--batch-size"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--mode", "sideways"], "--mode"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--bands", "1,2"], "--bands"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--window", "300", "--gsd", "1"], "--gsd"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--mode", "whole", "--window", "300"], "--window"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "-o", "{tmp}/a.tif"], "a.tif"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--model", "tiny-random", "--device", "abacus"], "abacus"),
        (["query", "{scene}", "q", "-o", "{tmp}/a.tif", "--model", "tiny-random", "--dtype", "int3"], "int3"),
        (["nonsense"], "nonsense"),
    ],
)
def test_usage_errors_exit_2(capsys, scene, tmp_path, args, fragment):
    args = [a.format(scene=scene, tmp=tmp_path) for a in args]
    code, out, err = invoke(capsys, *args)
    assert code == 2
    if fragment is not None:
        assert_one_error_line(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_a_plan_over_the_window_budget_exits_2_naming_the_scene(capsys, scene, tmp_path):
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "a.tif", "--model", "tiny-random",
                          "--mode", "tiled", "--window", "32", "--max-windows", "3")
    assert code == 2
    assert_one_error_line(err, f"{scene}: --window 32 cuts the 200 x 150 px scene into", "--max-windows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


@pytest.mark.parametrize("args", [[], ["query"], ["batch"], ["eval"]])
def test_a_command_with_nothing_to_do_prints_its_help_on_stderr_and_exits_2(capsys, args):
    """stdout carries results only; a script that ran this made a mistake."""
    code, out, err = invoke(capsys, *args)
    assert code == 2
    assert out == ""
    assert "Usage: segearth" in err and "Traceback" not in err


def test_what_c_libraries_print_themselves_stays_off_stderr():
    """libtiff's and libpng's own lines on a full disk would sit beside the one error line."""
    code = ("import os, sys\n"
            "from segearth_cli.process import keep_native_messages_off_stderr\n"
            "keep_native_messages_off_stderr()\n"
            "os.write(2, b'_tiffWriteProc: No space left on device.\\n')\n"
            "print('segearth: error: out.tif: cannot be written (No space left on device)', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == "segearth: error: out.tif: cannot be written (No space left on device)\n"


def test_ctrl_c_while_the_command_line_imports_is_one_line_and_130():
    """The console script's own start: a Ctrl-C there has nothing to clean up and no traceback to show."""
    code = ("import builtins, os, signal, sys\n"
            "real_import = builtins.__import__\n"
            "def interrupting_import(name, *args, **kwargs):\n"
            "    if name == 'cli':\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupting_import\n"
            "from segearth_cli.launch import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code, "query"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130
    assert done.stderr == "segearth: error: interrupted\n"


def test_an_output_that_is_a_symlink_loop_is_replaced_with_overwrite(capsys, scene, tmp_path):
    (tmp_path / "loop2.tif").symlink_to("loop1.tif")
    (tmp_path / "loop1.tif").symlink_to("loop2.tif")
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "loop1.tif", "--model", "tiny-random")
    assert code == 5
    assert_one_error_line(err, "loop1.tif: already exists")
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "loop1.tif", "--model", "tiny-random",
                          "--overwrite")
    assert code == 0, err
    assert not (tmp_path / "loop1.tif").is_symlink() and (tmp_path / "loop1.tif").is_file()


@pytest.mark.parametrize(("args", "status"), [(["query", "{tmp}/missing.tif", "q", "-o", "{tmp}/a.tif"], 3),
                                            (["query"], 2), ([], 2)])
@pytest.mark.parametrize("stderr", ["closed", "closed pipe"])
def test_the_exit_status_is_the_runs_own_when_stderr_is_gone(tmp_path, args, status, stderr):
    """A script may run us with 2>&- or into a pipe whose reader left: the status must still tell."""
    code = "import sys; from segearth_cli.launch import main; sys.argv[0] = 'segearth'; main()"
    argv = [sys.executable, "-c", code, *(a.format(tmp=tmp_path) for a in args)]
    if stderr == "closed":
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                              preexec_fn=lambda: os.close(2))
    else:
        read, write = os.pipe()
        os.close(read)
        try:
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=write, timeout=120)
        finally:
            os.close(write)
    assert done.returncode == status


def test_unknown_output_extension_exits_2_naming_the_path(capsys, scene, tmp_path):
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "answer.shp", "--model", "tiny-random")
    assert code == 2
    assert_one_error_line(err, "answer.shp", ".gpkg")


def test_existing_output_without_overwrite_exits_5_and_is_untouched(capsys, scene, tmp_path):
    existing = tmp_path / "answer.gpkg"
    existing.write_bytes(b"precious")
    code, out, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "mask.tif", "-o", existing,
                            "--model", "tiny-random")
    assert code == 5
    assert_one_error_line(err, "answer.gpkg", "--overwrite")
    assert existing.read_bytes() == b"precious"
    assert not (tmp_path / "mask.tif").exists()
    assert out == ""


def test_missing_scene_exits_3_with_one_line(capsys, tmp_path):
    code, out, err = invoke(capsys, "query", tmp_path / "nowhere.tif", "q", "-o", tmp_path / "a.tif",
                            "--model", "tiny-random")
    assert code == 3
    assert_one_error_line(err, "nowhere.tif")
    assert out == ""


def test_missing_output_folder_exits_5(capsys, scene, tmp_path):
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "missing" / "a.tif", "--model", "tiny-random")
    assert code == 5
    assert_one_error_line(err, "does not exist")


def test_vectors_of_an_ungeoreferenced_scene_need_pixel_coordinates(capsys, tmp_path):
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=60, height=40, count=3, dtype="uint8") as dst:
        dst.write(np.full((3, 40, 60), 100, np.uint8))
    code, _, err = invoke(capsys, "query", bare, "q", "-o", tmp_path / "bare.gpkg", "--model", "tiny-random")
    assert code == 2
    assert_one_error_line(err, "--pixel-coordinates")
    code, _, err = invoke(capsys, "query", bare, "q", "-o", tmp_path / "bare.gpkg", "-o", tmp_path / "bare_mask.tif",
                          "--model", "tiny-random", "--pixel-coordinates")
    assert code == 0
    # rasterio's NotGeoreferencedWarning and our own note come out as lines, not a warning dump.
    assert "warnings.warn" not in err and "NotGeoreferencedWarning" not in err
    assert any(line.startswith("segearth: warning:") and "georeferencing" in line for line in err.splitlines())
    assert (tmp_path / "bare.gpkg").exists() and (tmp_path / "bare_mask.tif").exists()


def test_json_prints_exactly_one_object_from_the_installed_command(scene, tmp_path):
    """The console script itself, as a shell script would run it."""
    out_tif, out_gpkg = tmp_path / "mask.tif", tmp_path / "answer.gpkg"
    done = subprocess.run(
        [sys.executable, "-c", "from segearth_cli.cli import main; main()", "query", str(scene), "where is it?",
         "-q", "and the rest?", "-o", str(out_tif), "-o", str(out_gpkg), "--model", "tiny-random", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # fails on anything but one JSON document
    assert done.stdout.count("\n") == 1
    assert summary["model"] == "tiny-random"
    assert [o["path"] for o in summary["outputs"]] == [str(out_tif), str(out_gpkg)]
    assert [q["question"] for q in summary["questions"]] == ["where is it?", "and the rest?"]
    for question in summary["questions"]:
        assert {"found", "polygons", "area_m2", "pixels"} <= set(question)
    assert summary["windows_run"] + summary["windows_skipped"] == summary["windows_total"] >= 1
    assert {"load_model", "model", "total"} <= set(summary["timings"])
    assert isinstance(summary["warnings"], list)
    assert "random weights" in done.stderr  # tiny-random says its answers mean nothing
    assert "Traceback" not in done.stderr
    with rasterio.open(out_tif) as ds:
        assert ds.count == 2 and ds.crs == CRS.from_epsg(32633)


def test_empty_result_exits_0_and_says_nothing_found(capsys, nodata_scene, tmp_path):
    code, out, err = invoke(capsys, "query", nodata_scene, "anything?", "-o", tmp_path / "none.gpkg",
                            "-o", tmp_path / "none.tif", "--model", "tiny-random", "--json", "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["found"] is False
    assert summary["questions"][0]["found"] is False and summary["questions"][0]["polygons"] == 0
    assert summary["windows_run"] == 0
    assert (tmp_path / "none.gpkg").exists() and (tmp_path / "none.tif").exists()


def test_quiet_prints_no_information(capsys, scene, tmp_path):
    code, out, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "a.tif", "--model", "tiny-random", "--quiet")
    assert code == 0
    assert out == ""
    assert all(line.startswith("segearth: warning:") for line in err.splitlines()), err


def test_offline_without_a_cached_model_exits_4_saying_how_to_get_it(scene, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", "from segearth_cli.cli import main; main()", "query", str(scene), "q",
         "-o", str(tmp_path / "a.tif")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 4
    assert_one_error_line(done.stderr, "earth-insights/SegEarth-R1-EarthReason", "segearth models pull")
    assert done.stdout == ""
    assert not (tmp_path / "a.tif").exists()


def test_unexpected_errors_are_one_line_unless_debug(capsys, scene, tmp_path, monkeypatch):
    import segearth_cli.query as query_module

    def explode(*args, **kwargs):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(query_module, "run_query", explode)
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "a.tif", "--model", "tiny-random")
    assert code == 1
    assert_one_error_line(err, "RuntimeError: the disk caught fire", "--debug")
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "a.tif", "--model", "tiny-random", "--debug")
    assert code == 1
    assert "Traceback" in err and "the disk caught fire" in err


def test_sample_scenes_are_the_ones_the_script_makes(tmp_path):
    """The committed sample scenes match what sample_scenes/make_samples.py generates."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "sample_scenes" / "make_samples.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert made == sorted(p.name for p in (repo / "sample_scenes").glob("*.tif"))
    for name in made:
        with rasterio.open(tmp_path / name) as fresh, rasterio.open(repo / "sample_scenes" / name) as committed:
            assert fresh.profile == committed.profile
            assert fresh.colorinterp == committed.colorinterp
            assert np.array_equal(fresh.read(), committed.read())


def test_invalid_task_is_a_usage_error(capsys, scene, tmp_path):
    code, _, err = invoke(capsys, "query", scene, "q", "-o", tmp_path / "a.tif", "--model", "tiny-random",
                          "--task", "poetry")
    assert code == 2
    assert_one_error_line(err, "poetry")
