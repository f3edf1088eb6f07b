"""The pipelined query: same answer for any number of readers or model copies, clean failures.

The stand-in segmenter answers every pixel from its own red value, so the sequential
reference (``stream_row_blocks``: read, segment, blend one after the other in one thread)
gives the expected probabilities without threads; the pipelined run must match it bit
for bit. Failures are injected in a reader, in the model and in the output writer.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from segearth_cli import cli
from segearth_cli import segmenter as segmenter_module
from segearth_cli.errors import EXIT_FAILURE, EXIT_INPUT, EXIT_OUTPUT, InputError, OutputError
from segearth_cli.executor import run_plan
from segearth_cli.outputs.raster import MaskRasterSink
from segearth_cli.query import OutputTarget, QueryOptions, run_query
from segearth_cli.scene import SceneReader, open_scene
from segearth_cli.segmenter import PixelFunctionSegmenter, ReplicatedSegmenter
from sequential_run import stream_row_blocks
from segearth_cli.stitch import window_probabilities
from segearth_cli.windows import Window, plan_windows

INPUT = 64
WINDOW = 80  # source pixels per window: every window is resampled into the 64 px canvas


def smooth_logits(windows: np.ndarray) -> np.ndarray:
    return (windows[:, 0].astype(np.float32) - 128.0) / 16.0


class CountingStandIn(PixelFunctionSegmenter):
    """The pixel-function stand-in, counting its calls, optionally slow (the GIL released meanwhile)."""

    def __init__(self, delay: float = 0.0, fail_at_call: int | None = None):
        super().__init__(smooth_logits, input_size=INPUT, name="stand-in")
        self.delay = delay
        self.fail_at_call = fail_at_call
        self.calls = 0

    def segment(self, windows, questions):
        self.calls += 1
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            raise RuntimeError("the model broke")
        time.sleep(self.delay)
        return super().segment(windows, questions)


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.tif"
    rows, cols = np.mgrid[0:300, 0:420]
    red = (128 + 100 * np.sin(rows / 23.0) * np.cos(cols / 31.0)).astype(np.uint8)
    data = np.stack([red, (rows * 3 + cols) % 256, (rows + 2 * cols) % 256]).astype(np.uint8)
    data[:, 200:, :60] = 0  # a corner of nodata: some windows skip the model entirely
    with rasterio.open(path, "w", driver="GTiff", width=420, height=300, count=3, dtype="uint8", nodata=0,
                       crs=CRS.from_epsg(32633), transform=Affine(2, 0, 400000, 0, -2, 5000000),
                       tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(data)
    return path


def sequential_answer(path, segmenter, questions, batch_size) -> tuple[np.ndarray, np.ndarray]:
    with open_scene(path) as reader:
        plan = plan_windows(reader.scene, "tiled", INPUT, window=WINDOW)
        blocks = list(stream_row_blocks(reader, plan, segmenter, questions, batch_size=batch_size))
    return np.concatenate([b.probabilities for b in blocks], axis=1), np.concatenate([b.valid for b in blocks])


def pipelined_answer(path, segmenter, questions, batch_size, workers) -> tuple[np.ndarray, np.ndarray]:
    blocks = []
    with open_scene(path) as reader:
        plan = plan_windows(reader.scene, "tiled", INPUT, window=WINDOW)
        assert len(plan) > 12, "the scene needs many windows to keep several readers busy"
        run_plan(reader, plan, segmenter, questions, blocks.append, batch_size=batch_size, workers=workers)
    assert [b.row_off for b in blocks] == sorted(b.row_off for b in blocks)
    return np.concatenate([b.probabilities for b in blocks], axis=1), np.concatenate([b.valid for b in blocks])


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("segearth-")]


@pytest.mark.parametrize("workers", [1, 4])
def test_any_number_of_readers_gives_the_sequential_answer(scene, workers):
    questions = ["one", "two"]
    expected, expected_valid = sequential_answer(scene, CountingStandIn(), questions, batch_size=3)
    assert expected_valid.any() and not expected_valid.all()
    got, got_valid = pipelined_answer(scene, CountingStandIn(), questions, batch_size=3, workers=workers)
    np.testing.assert_array_equal(got_valid, expected_valid)
    np.testing.assert_array_equal(got, expected)
    assert pipeline_threads() == []


def test_blending_goes_on_while_the_sink_writes_a_block(scene):
    expected, expected_valid = sequential_answer(scene, CountingStandIn(), ["q"], batch_size=2)
    blended = []
    blocks = []
    writing = threading.Event()
    blending_went_on = threading.Event()

    def on_window(window, ran_model):
        blended.append(window)
        if writing.is_set():
            blending_went_on.set()

    def write(block):
        assert threading.current_thread().name == "segearth-sink"
        if not blocks:
            # The first block stays in the sink until the blend has taken another window.
            writing.set()
            assert blending_went_on.wait(timeout=30)
        blocks.append(block)

    with open_scene(scene) as reader:
        plan = plan_windows(reader.scene, "tiled", INPUT, window=WINDOW)
        run_plan(reader, plan, CountingStandIn(), ["q"], write, batch_size=2, workers=2, on_window=on_window)
    assert len(blended) == len(plan)
    np.testing.assert_array_equal(np.concatenate([b.valid for b in blocks]), expected_valid)
    np.testing.assert_array_equal(np.concatenate([b.probabilities for b in blocks], axis=1), expected)
    assert pipeline_threads() == []


def test_two_model_copies_share_the_windows_and_give_the_one_copy_answer(scene):
    expected, expected_valid = sequential_answer(scene, CountingStandIn(), ["q"], batch_size=2)
    # Unequal speeds: batches finish out of order, yet are blended in plan order.
    copies = [CountingStandIn(delay=0.02), CountingStandIn(delay=0.001)]
    got, got_valid = pipelined_answer(scene, ReplicatedSegmenter(copies), ["q"], batch_size=2, workers=2)
    assert all(copy.calls > 0 for copy in copies)
    np.testing.assert_array_equal(got_valid, expected_valid)
    np.testing.assert_array_equal(got, expected)


def test_query_outputs_do_not_depend_on_workers_or_copies(scene, tmp_path):
    written = []
    for name, workers, model in (("a", 1, CountingStandIn()), ("b", 4, CountingStandIn()),
                                 ("c", 2, ReplicatedSegmenter([CountingStandIn(), CountingStandIn()]))):
        out = tmp_path / f"{name}.tif"
        run_query(scene, ["q"], [OutputTarget.for_path(out)], model,
                  QueryOptions(mode="tiled", window=WINDOW, probabilities=True, workers=workers, batch_size=3))
        with rasterio.open(out) as ds:
            written.append(ds.read())
    np.testing.assert_array_equal(written[0], written[1])
    np.testing.assert_array_equal(written[0], written[2])


class FootprintStandIn(CountingStandIn):
    """The stand-in, also mapping its answers onto footprints itself, as a GPU segmenter does."""

    def __init__(self):
        super().__init__()
        self.footprint_calls = 0

    def segment_footprints(self, windows, questions, footprints):
        self.footprint_calls += 1
        logits = self.segment(windows, questions)
        return [window_probabilities(planes, window) for planes, window in zip(logits, footprints)]


@pytest.mark.parametrize("window, maps_on_device", [(48, True), (64, True), (WINDOW, False)])
def test_answers_are_mapped_by_the_model_where_footprints_fit_the_canvas(scene, window, maps_on_device):
    """Footprints no larger than the canvas are mapped beside the model; the answer does not change."""
    questions = ["one", "two"]
    with open_scene(scene) as reader:
        plan = plan_windows(reader.scene, "tiled", INPUT, window=window)
        expected = list(stream_row_blocks(reader, plan, CountingStandIn(), questions, batch_size=3))
        model, blocks = FootprintStandIn(), []
        run_plan(reader, plan, model, questions, blocks.append, batch_size=3, workers=2)
    assert (model.footprint_calls > 0) == maps_on_device
    assert len(blocks) == len(expected)
    for got, want in zip(blocks, expected):
        np.testing.assert_array_equal(got.valid, want.valid)
        np.testing.assert_array_equal(got.probabilities, want.probabilities)


def test_a_segmenter_mapping_to_the_wrong_shape_is_refused(scene):
    class Broken(FootprintStandIn):
        def segment_footprints(self, windows, questions, footprints):
            return [answer[:, 1:] for answer in super().segment_footprints(windows, questions, footprints)]

    with open_scene(scene) as reader:
        plan = plan_windows(reader.scene, "tiled", INPUT, window=48)
        with pytest.raises(RuntimeError, match="probabilities of shape"):
            run_plan(reader, plan, Broken(), ["q"], lambda block: None, batch_size=2, workers=1)
    assert pipeline_threads() == []


@pytest.fixture(scope="module")
def tiny_model():
    return segmenter_module.load_segmenter("tiny-random", revision=None, device="cpu", dtype="float32",
                                           task="auto", quiet=True)


def test_the_model_maps_its_answers_as_the_host_does(tiny_model):
    """On a CPU the model hands back the host's mapping bit for bit; the device mapping (cut,
    bilinear resize and sigmoid in torch, what a GPU runs) agrees with it to rounding."""
    size = tiny_model.input_size
    rng = np.random.default_rng(7)
    canvases = rng.integers(0, 256, (3, 3, size, size), dtype=np.uint8)
    footprints = [
        Window(0, 0, size, size, 1.0, size, 0, 0, size, size),  # native
        Window(0, 0, 300, 200, size / 300, size, 0, 44, size, 170),  # shrunk into the canvas, padded
        Window(0, 0, 90, 120, 2.0, size, 8, 16, 180, 240),  # enlarged into the canvas
    ]
    logits = tiny_model.segment(canvases, ["a", "b"])
    answers = tiny_model.segment_footprints(canvases, ["a", "b"], footprints)
    on_device = segmenter_module.map_on_device(torch.from_numpy(logits), footprints)
    for logit_planes, answer, device_answer, window in zip(logits, answers, on_device, footprints):
        expected = window_probabilities(logit_planes, window)
        assert np.ptp(expected) > 0.01, "a flat answer would make the comparison vacuous"
        np.testing.assert_array_equal(answer, expected)
        assert device_answer.dtype == np.float32 and device_answer.shape == (2, window.height, window.width)
        np.testing.assert_allclose(device_answer, expected, rtol=0, atol=2e-6)


def test_workers_below_one_is_a_usage_error(scene, tmp_path):
    status = cli.run(["query", str(scene), "q", "--model", "tiny-random", "--workers", "0",
                      "-o", str(tmp_path / "out.tif")])
    assert status == 2
    assert not (tmp_path / "out.tif").exists()


# -- failures ---------------------------------------------------------------------------------


@pytest.fixture
def stand_in_model(monkeypatch):
    """The command line's model loading replaced by a stand-in the test chooses."""
    chosen = {}

    def load(*args, **kwargs):
        return chosen["model"]

    def limits(*args, **kwargs):
        # The up-front checks read the stand-in's input size; its questions fit any context.
        return segmenter_module.ModelLimits(chosen["model"].input_size, 10_000, len)

    monkeypatch.setattr(segmenter_module, "load_segmenter", load)
    monkeypatch.setattr(segmenter_module, "model_limits", limits)
    return chosen


def run_cli(scene, out_dir, *extra) -> int:
    targets = [out_dir / "answer.tif", out_dir / "answer.gpkg"]
    args = ["query", str(scene), "q", "--mode", "tiled", "--window", str(WINDOW), "--batch-size", "2", *extra]
    for target in targets:
        args += ["-o", str(target)]
    return cli.run(args)


def fail_at_call(monkeypatch, cls, method: str, call: int, error: Exception) -> None:
    """Make ``cls.method`` raise ``error`` at its ``call``-th call (from any thread), and work otherwise."""
    original = getattr(cls, method)
    calls = []
    lock = threading.Lock()

    def failing(self, *args):
        with lock:
            calls.append(None)
            count = len(calls)
        if count == call:
            raise error
        return original(self, *args)

    monkeypatch.setattr(cls, method, failing)


def assert_nothing_left(out_dir) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == []
    assert pipeline_threads() == []


def test_a_failing_reader_ends_the_query_with_the_input_exit_code(scene, tmp_path, monkeypatch, stand_in_model,
                                                                   capsys):
    stand_in_model["model"] = CountingStandIn()
    fail_at_call(monkeypatch, SceneReader, "read", 7, InputError(f"{scene}: read failed for a test window"))
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(scene, out, "--workers", "3") == EXIT_INPUT
    assert "read failed for a test window" in capsys.readouterr().err
    assert_nothing_left(out)


def test_a_failing_model_ends_the_query_with_the_failure_exit_code(scene, tmp_path, stand_in_model, capsys):
    stand_in_model["model"] = ReplicatedSegmenter([CountingStandIn(fail_at_call=3), CountingStandIn()])
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(scene, out, "--workers", "2") == EXIT_FAILURE
    assert "the model broke" in capsys.readouterr().err
    assert_nothing_left(out)


def test_a_failing_writer_ends_the_query_with_the_output_exit_code(scene, tmp_path, monkeypatch, stand_in_model,
                                                                    capsys):
    stand_in_model["model"] = CountingStandIn()
    fail_at_call(monkeypatch, MaskRasterSink, "write", 2, OutputError("answer.tif: no space left on the device"))
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(scene, out, "--workers", "4") == EXIT_OUTPUT
    assert "no space left" in capsys.readouterr().err
    assert_nothing_left(out)
