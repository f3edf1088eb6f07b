"""`segearth batch`: job files, idempotent reruns, kills, overlapping runs, failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.transform import Affine

from segearth_cli.batch import (
    RECORD_SUFFIX,
    RECORD_TAG,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SKIPPED,
    BatchSettings,
    check_paths,
    group_by_scene,
    read_jobs,
    read_record,
    run_batch,
    run_scene_group,
)
from segearth_cli.errors import UsageError

REAL_SCENES = Path(__file__).resolve().parents[1].parent / "shared" / "real_scenes"
QUESTIONS = ("where are the buildings?", "where is the water?")
BATCH = [sys.executable, "-m", "segearth_cli.cli", "batch"]
FAST = ["--model", "tiny-random", "--device", "cpu", "--mode", "whole"]


# --------------------------------------------------------------------------- helpers


def write_scene(path: Path, seed: int, width: int = 96, height: int = 80) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1.5, 0.0, 400000.0 + seed * 1000, 0.0, -1.5, 5000000.0)) as dst:
        dst.write(pixels)
    return path


def write_jobs_csv(path: Path, rows) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scene", "question", "output"])
        writer.writerows(rows)
    return path


def fingerprint(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def read_report(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_whole(output: Path) -> None:
    """The file opens and reads completely as what its extension says."""
    assert output.is_file(), output
    if output.suffix == ".tif":
        with rasterio.open(output) as dataset:
            values = set(np.unique(dataset.read(1)).tolist())
        assert values <= {0, 1, 255}, (output, values)
    else:
        pyogrio.read_dataframe(output)  # raises on a damaged file


def assert_valid_outputs(outputs) -> None:
    for output in map(Path, outputs):
        assert_whole(output)
        record = read_record(output)
        assert record is not None and record["state"] == "complete", output


def leftovers(folder: Path) -> list[str]:
    """Temporaries and lock files that a finished run must not leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".lock"))


# --------------------------------------------------------------------------- job files


def test_csv_rows_sharing_scene_and_question_form_one_job_with_several_outputs(tmp_path):
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", [
        ("scenes/a.tif", "where are the buildings?", "out/a_b.gpkg"),
        ("scenes/a.tif", "where are the buildings?", "out/a_b.tif"),
        ("scenes/a.tif", "where is the water?", "out/a_w.gpkg"),
        ("/data/b.tif", "where are the buildings?", "/results/b.geojson"),
    ])
    jobs = read_jobs(jobs_file)
    assert [job.number for job in jobs] == [1, 2, 3]
    assert jobs[0].scene == tmp_path / "scenes" / "a.tif"
    assert jobs[0].outputs == (tmp_path / "out" / "a_b.gpkg", tmp_path / "out" / "a_b.tif")
    assert jobs[0].lines == (2, 3)
    assert jobs[1].question == "where is the water?" and jobs[1].lines == (4,)
    assert jobs[2].scene == Path("/data/b.tif") and jobs[2].outputs == (Path("/results/b.geojson"),)


def test_json_lines_job_file_is_read_the_same_way(tmp_path):
    jobs_file = tmp_path / "nightly.jsonl"
    jobs_file.write_text(
        json.dumps({"scene": "a.tif", "question": "where, exactly, are the ships?", "output": "ships.gpkg"}) + "\n\n"
        + json.dumps({"scene": "a.tif", "question": "where, exactly, are the ships?", "output": "ships.tif"}) + "\n"
    )
    (job,) = read_jobs(jobs_file)
    assert job.question == "where, exactly, are the ships?"
    assert job.outputs == (tmp_path / "ships.gpkg", tmp_path / "ships.tif")
    assert job.lines == (1, 3)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("jobs.csv", "scene,query,output\na.tif,q,o.tif\n", "line 1: the header must be"),
        ("jobs.csv", "scene,question,output\na.tif,,o.tif\n", "line 2: empty 'question'"),
        ("jobs.csv", "scene,question,output\na.tif,q,o.tif\nb.tif,where, then?,o2.tif\n", "line 3: more than 3 columns"),
        ("jobs.csv", "scene,question,output\na.tif,q,o.txt\n", "line 2: "),
        ("jobs.csv", "scene,question,output\na.tif,q,o.tif\nb.tif,q,o.tif\n", "line 3: output"),
        ("jobs.csv", "scene,question,output\n", "no jobs"),
        ("jobs.jsonl", '{"scene": "a.tif", "question": "q", "output": "o.tif"}\n{"scene": "a.tif"\n', "line 2: not valid JSON"),
        ("jobs.jsonl", '{"scene": "a.tif", "question": "q"}\n', "line 1: missing 'output'"),
        ("jobs.jsonl", '{"scene": "a.tif", "question": "q", "output": "o.tif", "outptu": 1}\n', "line 1: unknown key"),
        ("jobs.jsonl", '["a.tif", "q", "o.tif"]\n', "line 1: expected an object"),
        ("jobs.csv", 'scene,question,output\na.tif,"where is the roof,o.tif\n', "line 2: not valid CSV"),
        ("jobs.csv", 'scene,question,output\na.tif,"where is" the roof,o.tif\n', "line 2: not valid CSV"),
        ("jobs.csv", "scene,question,output\na.tif,q,o.tif\na.tif,{long},o.tif\n", "line 3: not valid CSV"),
        ("jobs.csv", 'scene,question,output\na.tif,q,o.tif\n\n\nb.tif,"bad" x,p.tif\n', "line 5: not valid CSV"),
        ("jobs.jsonl", "{deep}\n", "line 1: not valid JSON (nested too deeply)"),
    ],
)
def test_bad_job_files_are_usage_errors_naming_file_and_line(tmp_path, name, content, expected):
    jobs_file = tmp_path / name
    # A cell over the csv module's size limit; JSON nested past the recursion limit.
    jobs_file.write_text(content.replace("{long}", "x" * 140_000).replace("{deep}", "[" * 200_000))
    with pytest.raises(UsageError) as caught:
        read_jobs(jobs_file)
    assert str(jobs_file) in caught.value.message
    assert expected in caught.value.message
    assert caught.value.exit_code == 2


def test_json_lines_end_at_newlines_only(tmp_path):
    """A question may hold U+2028 or a form feed as they are; they end no line, so line numbers stay right."""
    jobs_file = tmp_path / "jobs.jsonl"
    question = "where is the pier\u2028or the quay?"
    jobs_file.write_text(json.dumps({"scene": "a.tif", "question": question, "output": "o.tif"}, ensure_ascii=False)
                         + "\n\x0c\n" + '{"scene": "a.tif"\n', encoding="utf-8")
    with pytest.raises(UsageError, match="line 3: not valid JSON"):
        read_jobs(jobs_file)
    jobs_file.write_text(json.dumps({"scene": "a.tif", "question": question, "output": "o.tif"}, ensure_ascii=False),
                         encoding="utf-8")
    (job,) = read_jobs(jobs_file)
    assert job.question == question


def test_one_output_through_a_symlinked_folder_is_one_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", [("a.tif", "q", "out/x.tif"), ("b.tif", "q", "link/x.tif")])
    with pytest.raises(UsageError, match="line 3: output .*link/x.tif is also the output of a different job on line 2"):
        read_jobs(jobs_file)
    # The same job naming it twice writes it once.
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", [("a.tif", "q", "out/x.tif"), ("a.tif", "q", "link/x.tif")])
    (job,) = read_jobs(jobs_file)
    assert job.outputs == (tmp_path / "out" / "x.tif",)


@pytest.mark.parametrize(("outputs", "expected"), [
    (("out/x.tif", "out/x.tif.segearth.json"), r"line 3: .*x.tif.segearth.json is the output of line 3 and also "
                                               r"the record of x.tif \(line 2\)"),
    (("out/x.tif.segearth.json", "out/x.tif"), r"line 3: .*x.tif.segearth.json is the record of x.tif \(line 3\) "
                                               r"and also the output of line 2"),
])
def test_an_output_that_is_another_jobs_record_is_refused(tmp_path, outputs, expected):
    """Each run would overwrite the other job's record with a result, or the result with a record."""
    scenes = [write_scene(tmp_path / "a.tif", 1), write_scene(tmp_path / "b.tif", 2)]
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", [(scene.name, "q", output) for scene, output in zip(scenes, outputs)])
    with pytest.raises(UsageError, match=expected) as caught:
        check_paths(jobs_file, read_jobs(jobs_file))
    assert str(jobs_file) in caught.value.message


@pytest.mark.parametrize("report_name", ["out/x.tif", "out/x.tif.segearth.json", "out/x.tif.lock"])
def test_a_report_onto_an_output_its_record_or_its_lock_is_refused(tmp_path, report_name):
    scene = write_scene(tmp_path / "a.tif", 1)
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", [(scene.name, "q", "out/x.tif")])
    with pytest.raises(UsageError, match=f"--report .*{report_name.split('/')[-1]}: is also the"):
        check_paths(jobs_file, read_jobs(jobs_file), tmp_path / report_name)


def test_missing_job_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="job file not found"):
        read_jobs(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- running jobs


# The library tests below exercise the batch logic (records, locks, grouping), which does not
# depend on the network: a stand-in whose logits are a function of the red channel answers
# instantly. The command-line tests further down run the real tiny-random model.


@pytest.fixture(scope="module")
def segmenter():
    from segearth_cli.segmenter import PixelFunctionSegmenter

    return PixelFunctionSegmenter(lambda windows: (windows[:, 0].astype(np.float32) - 128.0) / 16.0,
                                  input_size=128, name="red-channel")


@pytest.fixture(scope="module")
def identity():
    return {"id": "red-channel", "revision": "built-in"}


def batch_options(**changes):
    from segearth_cli.query import QueryOptions

    return QueryOptions(**{"mode": "whole", **changes})


def make_jobs(tmp_path: Path, scenes: int = 3, kinds=(".tif", ".gpkg")) -> Path:
    rows = []
    folder = tmp_path / "scenes"
    folder.mkdir(exist_ok=True)
    for index in range(scenes):
        scene = write_scene(folder / f"s{index}.tif", seed=index)
        for q_index, question in enumerate(QUESTIONS):
            for kind in kinds:
                rows.append((f"scenes/{scene.name}", question, f"out/{scene.stem}_q{q_index}{kind}"))
    return write_jobs_csv(tmp_path / "jobs.csv", rows)


def outputs_of(jobs_file: Path) -> list[Path]:
    return [output for job in read_jobs(jobs_file) for output in job.outputs]


def test_first_run_computes_all_rerun_skips_all_and_touches_nothing(tmp_path, segmenter, identity):
    jobs = read_jobs(make_jobs(tmp_path))
    first = run_batch(jobs, segmenter, batch_options(), model=identity)
    assert [r.status for r in first.results] == [STATUS_OK] * len(jobs)
    assert first.exit_code == 0
    outputs = [o for job in jobs for o in job.outputs]
    assert_valid_outputs(outputs)
    assert leftovers(tmp_path / "out") == []
    before = {o: fingerprint(o) for o in outputs}

    second = run_batch(jobs, segmenter, batch_options(batch_size=7), model=identity)
    assert [(r.status, r.reason) for r in second.results] == [(STATUS_SKIPPED, "up to date")] * len(jobs)
    assert {o: fingerprint(o) for o in outputs} == before

    # The GeoTIFF carries the same inputs as its sidecar record.
    tif = next(o for o in outputs if o.suffix == ".tif")
    with rasterio.open(tif) as dataset:
        assert json.loads(dataset.tags()[RECORD_TAG]) == read_record(tif)["inputs"]


def test_a_scene_group_runs_from_plain_data_that_crossed_a_pickle(tmp_path, segmenter, identity):
    import pickle

    scene, jobs = group_by_scene(read_jobs(make_jobs(tmp_path, scenes=1)))[0]
    scene, jobs, settings = pickle.loads(pickle.dumps((scene, jobs, BatchSettings(batch_options(), identity))))
    loads = []

    def get_segmenter():
        loads.append(1)
        return segmenter

    streamed = []
    results = run_scene_group(scene, jobs, settings, get_segmenter, on_result=streamed.append)
    assert [r.status for r in results] == [STATUS_OK] * len(jobs) and streamed == results
    assert_valid_outputs([o for job in jobs for o in job.outputs])
    again = run_scene_group(scene, jobs, settings, get_segmenter)
    assert [(r.status, r.reason) for r in again] == [(STATUS_SKIPPED, "up to date")] * len(jobs)
    assert loads == [1]  # an up-to-date group loads no model


def test_changing_one_question_recomputes_only_that_job(tmp_path, segmenter, identity):
    jobs_file = make_jobs(tmp_path, scenes=2, kinds=(".gpkg",))
    run_batch(read_jobs(jobs_file), segmenter, batch_options(), model=identity)
    outputs = outputs_of(jobs_file)
    before = {o: fingerprint(o) for o in outputs}

    text = jobs_file.read_text()
    assert text.count("scenes/s1.tif,where is the water?") == 1
    jobs_file.write_text(text.replace("scenes/s1.tif,where is the water?", "scenes/s1.tif,where are the ships?"))
    changed_output = tmp_path / "out" / "s1_q1.gpkg"

    report = run_batch(read_jobs(jobs_file), segmenter, batch_options(), model=identity)
    statuses = {r.job.question + " @ " + r.job.scene.name: r.status for r in report.results}
    assert statuses == {
        "where are the buildings? @ s0.tif": STATUS_SKIPPED,
        "where is the water? @ s0.tif": STATUS_SKIPPED,
        "where are the buildings? @ s1.tif": STATUS_SKIPPED,
        "where are the ships? @ s1.tif": STATUS_OK,
    }
    for output in outputs:
        if output == changed_output:
            assert fingerprint(output) != before[output]
            assert read_record(output)["inputs"]["question"] == "where are the ships?"
        else:
            assert fingerprint(output) == before[output], output


def test_changed_scene_or_result_option_recomputes_and_force_recomputes_everything(tmp_path, segmenter,
                                                                                   identity):
    jobs = read_jobs(make_jobs(tmp_path, scenes=2, kinds=(".tif",)))
    run_batch(jobs, segmenter, batch_options(), model=identity)

    # Rewritten with the same size: the mtime (and the partial hash) tell.
    write_scene(tmp_path / "scenes" / "s0.tif", seed=99)
    report = run_batch(jobs, segmenter, batch_options(), model=identity)
    assert {r.job.scene.name: r.status for r in report.results if r.status == STATUS_OK} == {"s0.tif": STATUS_OK}
    assert [r.status for r in report.results].count(STATUS_SKIPPED) == 2

    report = run_batch(jobs, segmenter, batch_options(threshold=0.7), model=identity)
    assert [r.status for r in report.results] == [STATUS_OK] * 4

    report = run_batch(jobs, segmenter, batch_options(threshold=0.7), model=identity, force=True)
    assert [r.status for r in report.results] == [STATUS_OK] * 4

    other_model = dict(identity, revision="another")
    report = run_batch(jobs, segmenter, batch_options(threshold=0.7), model=other_model)
    assert [r.status for r in report.results] == [STATUS_OK] * 4


def test_an_output_not_written_by_batch_is_replaced_only_with_overwrite(tmp_path, segmenter, identity):
    jobs = read_jobs(make_jobs(tmp_path, scenes=1, kinds=(".gpkg",)))
    foreign = jobs[0].outputs[0]
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"somebody's own file")

    report = run_batch(jobs, segmenter, batch_options(), model=identity)
    assert [r.status for r in report.results] == [STATUS_FAILED, STATUS_OK]
    assert report.results[0].exit_code == 5 and report.exit_code == 5
    assert "--overwrite" in report.results[0].error and str(foreign) in report.results[0].error
    assert foreign.read_bytes() == b"somebody's own file"

    report = run_batch(jobs, segmenter, batch_options(overwrite=True), model=identity)
    assert [r.status for r in report.results] == [STATUS_OK, STATUS_SKIPPED]
    assert_valid_outputs(jobs[0].outputs)


def test_an_output_locked_by_another_run_is_skipped_and_said_so(tmp_path, segmenter, identity):
    from segearth_cli.atomic import OutputLock

    jobs = read_jobs(make_jobs(tmp_path, scenes=1, kinds=(".tif",)))
    jobs[1].outputs[0].parent.mkdir(parents=True)
    with OutputLock(jobs[1].outputs[0]):
        report = run_batch(jobs, segmenter, batch_options(), model=identity)
    assert [r.status for r in report.results] == [STATUS_OK, STATUS_SKIPPED]
    assert report.results[1].reason.startswith("locked by another run")
    assert report.exit_code == 0
    assert not jobs[1].outputs[0].exists()


def test_with_wait_a_locked_output_is_computed_once_the_lock_is_free(tmp_path, segmenter, identity):
    import threading

    from segearth_cli.atomic import OutputLock

    jobs = read_jobs(make_jobs(tmp_path, scenes=1, kinds=(".tif",)))
    held = jobs[0].outputs[0]
    held.parent.mkdir(parents=True)
    reports = []
    lock = OutputLock(held).acquire()
    try:
        worker = threading.Thread(
            target=lambda: reports.append(run_batch(jobs, segmenter, batch_options(), model=identity, wait=True)))
        worker.start()
        worker.join(timeout=0.5)  # gives the run time to reach the lock; it cannot finish while it is held
        assert worker.is_alive()
    finally:
        lock.release()
    worker.join()
    assert [r.status for r in reports[0].results] == [STATUS_OK, STATUS_OK]
    assert_valid_outputs([held])


def test_model_is_loaded_only_when_a_job_needs_it(tmp_path, segmenter, identity):
    jobs = read_jobs(make_jobs(tmp_path, scenes=1, kinds=(".tif",)))
    loads = []

    def load():
        loads.append(1)
        return segmenter

    run_batch(jobs, load, batch_options(), model=identity)
    run_batch(jobs, load, batch_options(), model=identity)
    assert len(loads) == 1


def test_jobs_of_one_scene_share_one_pass_over_its_windows(tmp_path, segmenter, identity):
    from segearth_cli.scene import open_scene
    from segearth_cli.windows import plan_windows

    scene = write_scene(tmp_path / "wide.tif", seed=3, width=300, height=200)
    rows = [("wide.tif", question, f"out/wide_q{index}{kind}")
            for index, question in enumerate(QUESTIONS) for kind in (".tif", ".gpkg")]
    jobs = read_jobs(write_jobs_csv(tmp_path / "jobs.csv", rows))
    calls = []

    class Counting:
        name, input_size = segmenter.name, segmenter.input_size

        def segment(self, windows, questions):
            calls.append((windows.shape[0], list(questions)))
            return segmenter.segment(windows, questions)

    report = run_batch(jobs, Counting(), batch_options(mode="tiled"), model=identity)
    assert [r.status for r in report.results] == [STATUS_OK, STATUS_OK]
    with open_scene(scene) as reader:
        windows = len(plan_windows(reader.scene, "tiled", segmenter.input_size))
    assert windows > 1
    # Every window went through the model once, carrying both questions.
    assert sum(count for count, _ in calls) == windows
    assert all(questions == list(QUESTIONS) for _, questions in calls)
    assert_valid_outputs([o for job in jobs for o in job.outputs])


# --------------------------------------------------------------------------- whole runs, as cron runs them


def real_scenes(folder: Path, *names: str) -> list[Path]:
    paths = [folder / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"../shared/real_scenes/ lacks {', '.join(missing)}")
    return paths


def finished_lines(report: Path) -> list[dict]:
    """Complete lines of a report another process may still be writing."""
    try:
        text = report.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def segearth(capsys, *args: str) -> tuple[int, str, str]:
    from segearth_cli.cli import run

    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_killed_batch_over_real_scenes_resumes_without_touching_finished_jobs(tmp_path, capsys, real_scenes_dir):
    # Read in place: the job file names the shared scenes by absolute path.
    scenes = real_scenes(
        real_scenes_dir,
        "solaris__rgb_unmasked.tif",
        "rio-tiler__201404_13SED190110_201404_0x1500m_CL_1.tif",
        "georust-gdal__m_3607824_se_17_1_20160620_sub.tif",
        "rasterio__RGB.byte.tif",
    )
    rows = [(str(scene), question, f"out/{scene.stem}_q{index}{kind}")
            for scene in scenes for index, question in enumerate(QUESTIONS) for kind in (".tif", ".gpkg")]
    jobs_file = write_jobs_csv(tmp_path / "jobs.csv", rows)
    first_report = tmp_path / "first.jsonl"

    process = subprocess.Popen([*BATCH, jobs_file, *FAST, "--report", first_report],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any(line["status"] == STATUS_OK for line in finished_lines(first_report)):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the batch ended before it could be killed part-way: " + \
        process.stderr.read().decode()[-500:]

    finished = {line["job"] for line in finished_lines(first_report) if line["status"] == STATUS_OK}
    assert finished
    jobs = read_jobs(jobs_file)
    # Whatever sits at a target path after the kill is a whole output.
    for output in (o for job in jobs for o in job.outputs if o.exists()):
        assert_whole(output)
    before = {o: fingerprint(o) for job in jobs if job.number in finished for o in job.outputs}

    second_report = tmp_path / "second.jsonl"
    code, _, err = segearth(capsys, "batch", jobs_file, *FAST, "--report", second_report)
    assert code == 0, err
    lines = {line["job"]: line for line in read_report(second_report)}
    assert sorted(lines) == [job.number for job in jobs]
    for number in finished:
        assert (lines[number]["status"], lines[number]["reason"]) == (STATUS_SKIPPED, "up to date")
    assert {o: fingerprint(o) for o in before} == before
    unfinished = [n for n in lines if n not in finished]
    assert unfinished, "every job had finished before the kill"
    assert all(lines[n]["status"] in (STATUS_OK, STATUS_SKIPPED) for n in unfinished)
    assert any(lines[n]["status"] == STATUS_OK for n in unfinished)
    assert_valid_outputs([o for job in jobs for o in job.outputs])


def test_two_runs_started_together_write_every_output_once(tmp_path):
    jobs_file = make_jobs(tmp_path, scenes=3)
    reports = [tmp_path / "run_a.jsonl", tmp_path / "run_b.jsonl"]
    processes = [subprocess.Popen([*BATCH, jobs_file, *FAST, "--report", report, "--quiet"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for report in reports]
    for process in processes:
        process.wait(timeout=180)
    assert [p.returncode for p in processes] == [0, 0], [p.stderr.read().decode()[-500:] for p in processes]

    runs = [{line["job"]: line for line in read_report(report)} for report in reports]
    jobs = read_jobs(jobs_file)
    for job in jobs:
        statuses = sorted(run[job.number]["status"] for run in runs)
        assert statuses == [STATUS_OK, STATUS_SKIPPED], (job.number, statuses)
        skipped = next(run[job.number] for run in runs if run[job.number]["status"] == STATUS_SKIPPED)
        assert skipped["reason"] == "up to date" or skipped["reason"].startswith("locked by another run")
    assert_valid_outputs([o for job in jobs for o in job.outputs])
    assert leftovers(tmp_path / "out") == []


def damaged_scene(tmp_path: Path) -> Path:
    """The shared corrupt GeoTIFF (opens, but tile reads fail), or one made the same way."""
    shared = REAL_SCENES / "rasterio__corrupt.tif"
    if shared.is_file():
        return shared
    path = tmp_path / "corrupt.tif"
    rng = np.random.default_rng(7)
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", tiled=True,
                       blockxsize=128, blockysize=128, compress="deflate", crs="EPSG:32633",
                       transform=Affine(1.0, 0.0, 400000.0, 0.0, -1.0, 5000000.0)) as dst:
        dst.write(rng.integers(0, 256, size=(3, 256, 256), dtype=np.uint8))
    with rasterio.open(path) as src:
        offsets = [int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)) for r in (0, 1) for c in (0, 1)]
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset:offset + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_scene_fails_its_jobs_only_and_sets_the_exit_code(tmp_path, capsys):
    jobs_file = make_jobs(tmp_path, scenes=2)
    corrupt = damaged_scene(tmp_path)
    with jobs_file.open("a", newline="") as handle:
        handle.write(f"{corrupt},where are the buildings?,out/corrupt.tif\n")
        handle.write(f"{corrupt},where are the buildings?,out/corrupt.gpkg\n")
    # The corrupt scene comes last in the file but must not stop the good ones before it,
    # nor a good one after it.
    write_scene(tmp_path / "scenes" / "late.tif", seed=42)
    with jobs_file.open("a", newline="") as handle:
        handle.write("scenes/late.tif,where is the water?,out/late.gpkg\n")

    report = tmp_path / "report.jsonl"
    # Tiled at full resolution: a whole-scene read would come from the intact overviews.
    # A batch of 16 windows fails while it is being read, before any model call.
    code, out, err = segearth(capsys, "batch", jobs_file, "--model", "tiny-random", "--device", "cpu",
                              "--mode", "tiled", "--window", "256", "--overlap", "0", "--batch-size", "16",
                              "--report", report, "--json")
    assert code == 3
    lines = read_report(report)
    assert [json.loads(line) for line in out.splitlines()] == lines
    failed = [line for line in lines if line["status"] == STATUS_FAILED]
    assert len(failed) == 1
    assert failed[0]["scene"] == str(corrupt)
    assert failed[0]["outputs"] == [str(tmp_path / "out" / "corrupt.tif"), str(tmp_path / "out" / "corrupt.gpkg")]
    assert failed[0]["exit_code"] == 3 and corrupt.name in failed[0]["error"]
    assert "Traceback" not in err and failed[0]["error"] in err
    good = [line for line in lines if line["status"] != STATUS_FAILED]
    assert len(good) == 5 and all(line["status"] == STATUS_OK for line in good)
    assert_valid_outputs([o for line in good for o in line["outputs"]])
    assert not (tmp_path / "out" / "corrupt.tif").exists()
    assert not (tmp_path / "out" / ("corrupt.tif" + RECORD_SUFFIX)).exists()
