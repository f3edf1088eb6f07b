"""`segearth eval`: data set readers, the paper's metrics and both scoring protocols.

Each test builds a small data set on disk in one of the public layouts and scores it with a
stand-in segmenter whose masks are known. The expected scores are computed here with plain
numpy from masks the test constructs itself.

The canvas side is 32 instead of 1024 to keep the tests fast. Image sizes are chosen so that
each is scaled onto the canvas by exactly 2, 1 or 1/2, and image and label content is
constant over 2x2 blocks where it is shrunk; then the resized masks can be written down
exactly (repeat or subsample) without going through OpenCV.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from segearth_cli.errors import InputError, OutputError, UsageError
from segearth_cli.evaluate import (
    PRECISION_THRESHOLDS,
    IoUAccumulator,
    _unique_names,
    evaluate,
    read_dataset,
    write_per_sample_csv,
)
from segearth_cli.segmenter import ModelLimits
from test_executor import pipeline_threads

#: Limits of a stand-in model: one token per word, at most 40.
STAND_IN_LIMITS = ModelLimits(input_size=32, question_room=40, count_tokens=lambda question: len(question.split()))

S = 32


# --------------------------------------------------------------------------- stand-in segmenters


class RedSegmenter:
    """Logit +1 where the window's red channel is above 127, -1 elsewhere (padding is black)."""

    name = "red-pixels"
    input_size = S

    def __init__(self):
        self.calls: list[list[str]] = []

    def segment(self, windows, questions):
        self.calls.append(list(questions))
        logits = np.where(windows[:, 0] > 127, 1.0, -1.0).astype(np.float32)
        return np.repeat(logits[:, None], len(questions), axis=1)

    def segment_pairs(self, windows, questions):
        # Window by window, as a model without batched pairs would run.
        return np.stack([self.segment(window[None], [question])[0, 0] for window, question in zip(windows, questions)])


class PairedRedSegmenter(RedSegmenter):
    """Same masks, but answers one question per window in a single call."""

    def segment_pairs(self, windows, questions):
        assert len(windows) == len(questions)
        self.calls.append(list(questions))
        return np.where(windows[:, 0] > 127, 1.0, -1.0).astype(np.float32)


RECT = (5, 21, 7, 27)  # rows 5..20, cols 7..26 of the canvas, on odd and even edges on purpose


class RectSegmenter:
    """The same rectangle on every canvas, whatever the image."""

    name = "rectangle"
    input_size = S

    def segment(self, windows, questions):
        logits = -np.ones((len(windows), len(questions), S, S), dtype=np.float32)
        r0, r1, c0, c1 = RECT
        logits[:, :, r0:r1, c0:c1] = 1.0
        return logits

    def segment_pairs(self, windows, questions):
        return self.segment(windows, questions[:1])[:, 0]


# --------------------------------------------------------------------------- expected masks, by hand


def fitted(h, w):
    """Canvas size of an image in these tests: all scales are exactly 2, 1 or 1/2."""
    factor = S / max(h, w)
    return int(h * factor), int(w * factor), factor


def onto_canvas(mask, factor):
    """Resize by an exact factor of 2, 1 or 1/2 (content is 2x2-block constant when shrunk) and centre-pad."""
    if factor == 2:
        resized = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    elif factor == 1:
        resized = mask
    else:
        assert factor == 0.5
        resized = mask[::2, ::2]
    canvas = np.zeros((S, S), dtype=bool)
    h, w = resized.shape
    top, left = (S - h) // 2, (S - w) // 2
    canvas[top : top + h, left : left + w] = resized
    return canvas


def rect_back_to_image(h, w):
    """The rectangle segmenter's mask after cropping the padding and resizing to h x w.

    Bilinear by exactly 2 down averages each 2x2 block (the logit is > 0 only when all four
    pixels are inside); by 2 up, each pixel takes the canvas pixel it falls in.
    """
    nh, nw, factor = fitted(h, w)
    top, left = (S - nh) // 2, (S - nw) // 2
    canvas = np.zeros((S, S), dtype=bool)
    r0, r1, c0, c1 = RECT
    canvas[r0:r1, c0:c1] = True
    crop = canvas[top : top + nh, left : left + nw]
    if factor == 2:
        return crop.reshape(h, 2, w, 2).sum(axis=(1, 3)) == 4
    if factor == 1:
        return crop
    return np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)


def rect_canvas():
    canvas = np.zeros((S, S), dtype=bool)
    r0, r1, c0, c1 = RECT
    canvas[r0:r1, c0:c1] = True
    return canvas


def expected_scores(pairs):
    """(giou, ciou, {t: precision}) and per-sample (I, U, IoU) from (prediction, target) masks."""
    per_sample = []
    for prediction, target in pairs:
        assert prediction.shape == target.shape
        inter = int(np.logical_and(prediction, target).sum())
        union = int(np.logical_or(prediction, target).sum())
        iou = 1.0 if union == 0 else inter / (union + 1e-5)
        per_sample.append((inter, union, iou))
    ious = np.array([s[2] for s in per_sample])
    giou = float(ious.mean())
    ciou = sum(s[0] for s in per_sample) / (sum(s[1] for s in per_sample) + 1e-10)
    precision = {t: float((ious > t).mean()) for t in PRECISION_THRESHOLDS}
    return giou, ciou, precision, per_sample


def assert_protocol(accumulator, pairs):
    giou, ciou, precision, _ = expected_scores(pairs)
    assert accumulator.count == len(pairs)
    assert accumulator.giou == pytest.approx(giou, abs=1e-12)
    assert accumulator.ciou == pytest.approx(ciou, abs=1e-12)
    for t in PRECISION_THRESHOLDS:
        assert accumulator.precision_at(t) == pytest.approx(precision[t])


# --------------------------------------------------------------------------- data on disk


def blocky(rng, h, w, p=0.5):
    """A boolean h x w pattern constant over 2x2 blocks."""
    return np.repeat(np.repeat(rng.random((h // 2, w // 2)) < p, 2, axis=0), 2, axis=1)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def write_grey(path: Path, grey: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), grey.astype(np.uint8))


def red_image(red_mask):
    """Red where the mask is set, blue elsewhere (so the red channel alone carries the mask)."""
    rgb = np.zeros(red_mask.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = np.where(red_mask, 255, 0)
    rgb[..., 2] = np.where(red_mask, 0, 200)
    return rgb


# (name, height, width): portrait x2, landscape x2, square x1, shrunk by 2 (non-square), and
# an image with no red at all whose label is empty (both-empty counts as IoU 1).
SHAPES = [("alpha", 16, 8), ("bravo", 8, 16), ("charlie", 32, 32), ("delta", 64, 48), ("echo", 16, 16)]


def make_earthreason(root: Path, split="val", nested=False, seed=0):
    """EarthReason layout; returns {name: (red mask, target mask, first question)}."""
    rng = np.random.default_rng(seed)
    base = root / split / split if nested else root / split
    truth = {}
    for index, (name, h, w) in enumerate(SHAPES):
        red = blocky(rng, h, w) if name != "echo" else np.zeros((h, w), bool)
        label_values = np.where(blocky(rng, h, w), rng.choice([1, 128, 255]), 0).astype(np.uint8)
        if name == "echo":
            label_values[:] = 0
        write_rgb(base / "images" / f"{name}.png", red_image(red))
        write_grey(base / "labels" / f"{name}.png", label_values)
        questions = [f"where is thing {index}?", "a second question that must not be used"]
        qa = {"questions": questions, "answer": [] if name == "echo" else ["it is there"]}
        suffix = ".txt" if name == "bravo" else ".json"  # the official reader accepts JSON in .txt too
        (base / "QAs").mkdir(parents=True, exist_ok=True)
        (base / "QAs" / f"{name}{suffix}").write_text(json.dumps(qa))
        truth[name] = (red, label_values != 0, questions[0])
    return truth


# --------------------------------------------------------------------------- metrics alone


def test_accumulator_matches_definitions_on_counts():
    acc = IoUAccumulator()
    # both empty -> 1; I/U = 1/2 -> 0.499995, not above 0.5 (strict); 9/10 -> 0.89999...
    for inter, union in [(0, 0), (1, 2), (9, 10), (0, 7)]:
        acc.add_counts(inter, union)
    ious = [1.0, 1 / (2 + 1e-5), 9 / (10 + 1e-5), 0.0]
    assert acc.giou == pytest.approx(sum(ious) / 4)
    assert acc.ciou == pytest.approx(10 / (19 + 1e-10))
    assert acc.precision_at(0.5) == 0.5  # only the both-empty sample and 9/10
    assert acc.precision_at(0.9) == 0.25  # 0.89999 is not > 0.9
    summary = acc.summary()
    assert list(summary["precision_at"]) == ["0.5", "0.6", "0.7", "0.8", "0.9"]


def test_precision_threshold_is_strict():
    # A both-empty sample scores exactly 1.0, which is not above a threshold of 1.0.
    acc = IoUAccumulator(thresholds=(1.0,))
    acc.add_counts(0, 0)
    assert acc.giou == 1.0
    assert acc.precision_at(1.0) == 0.0


def test_accumulator_on_masks():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    acc = IoUAccumulator()
    inter, union, iou = acc.add(a, b)
    assert (inter, union) == (4, 12)
    assert iou == pytest.approx(4 / (12 + 1e-5))


# --------------------------------------------------------------------------- EarthReason


@pytest.mark.parametrize("nested", [False, True])
def test_earthreason_scores_equal_hand_computed(tmp_path, nested):
    truth = make_earthreason(tmp_path, nested=nested)
    samples = read_dataset(tmp_path, "earthreason", "val")
    assert [s.name for s in samples] == sorted(truth)
    segmenter = RedSegmenter()
    report = evaluate(samples, segmenter, dataset="earthreason", split="val")

    # One call per sample, each with the first question of its own QA file.
    assert segmenter.calls == [[truth[name][2]] for name in sorted(truth)]
    official, original = [], []
    for name, h, w in sorted(SHAPES):
        red, target, _ = truth[name]
        factor = fitted(h, w)[2]
        official.append((onto_canvas(red, factor), onto_canvas(target, factor)))
        original.append((red, target))
    assert_protocol(report.official, official)
    assert_protocol(report.original_size, original)
    # The empty image with an empty label is a perfect sample in both protocols.
    echo = next(r for r in report.samples if r.name == "echo")
    assert echo.official == (0, 0, 1.0) and echo.original_size == (0, 0, 1.0)


def test_rectangle_prediction_scores_padding_as_false_positive(tmp_path):
    truth = make_earthreason(tmp_path, seed=3)
    samples = read_dataset(tmp_path, "earthreason", "val")
    report = evaluate(samples, RectSegmenter(), dataset="earthreason", split="val")
    official, original = [], []
    for name, h, w in sorted(SHAPES):
        _, target, _ = truth[name]
        official.append((rect_canvas(), onto_canvas(target, fitted(h, w)[2])))
        original.append((rect_back_to_image(h, w), target))
    assert_protocol(report.official, official)
    assert_protocol(report.original_size, original)
    # The rectangle spills into the padding of the portrait images, so the protocols differ.
    assert report.official.giou != report.original_size.giou
    echo = next(r for r in report.samples if r.name == "echo")
    assert echo.official == (0, int(rect_canvas().sum()), 0.0)


def test_batching_limit_and_outputs(tmp_path):
    truth = make_earthreason(tmp_path, seed=5)
    samples = read_dataset(tmp_path, "earthreason", "val")
    segmenter = PairedRedSegmenter()
    predictions = tmp_path / "out" / "pred"
    report = evaluate(samples, segmenter, dataset="earthreason", split="val", limit=4, batch_size=3,
                      save_predictions=predictions)
    names = sorted(truth)[:4]
    assert segmenter.calls == [[truth[n][2] for n in names[:3]], [truth[names[3]][2]]]
    assert report.n == 4
    shapes = {name: (h, w) for name, h, w in SHAPES}
    for name in names:
        saved = cv2.imread(str(predictions / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        h, w = shapes[name]
        assert saved.shape == (S, S)
        np.testing.assert_array_equal(saved, onto_canvas(truth[name][0], fitted(h, w)[2]).astype(np.uint8) * 255)
    assert sorted(p.name for p in predictions.iterdir()) == [f"{n}.png" for n in names]

    csv_path = tmp_path / "rows.csv"
    write_per_sample_csv(csv_path, report.samples)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sample"] for r in rows] == names
    _, _, _, per_sample = expected_scores(
        [(truth[n][0], truth[n][1]) for n in names]
    )
    for row, (inter, union, iou), name in zip(rows, per_sample, names):
        assert row["image"] == f"{name}.png"
        assert row["question"] == truth[name][2]
        assert (int(row["original_size_intersection"]), int(row["original_size_union"])) == (inter, union)
        assert float(row["original_size_iou"]) == pytest.approx(iou, abs=1e-6)
        assert {"official_intersection", "official_union", "official_iou"} <= set(row)


def test_progress_reports_running_official_giou(tmp_path):
    truth = make_earthreason(tmp_path, seed=7)
    samples = read_dataset(tmp_path, "earthreason", "val")
    seen = []
    evaluate(samples, RedSegmenter(), dataset="earthreason", split="val", limit=4, batch_size=2,
             progress=lambda done, total, giou: seen.append((done, total, giou)))
    shapes = {name: (h, w) for name, h, w in SHAPES}
    ious = []
    for name in sorted(truth)[:4]:
        factor = fitted(*shapes[name])[2]
        _, _, _, per_sample = expected_scores([(onto_canvas(truth[name][0], factor), onto_canvas(truth[name][1], factor))])
        ious.append(per_sample[0][2])
    assert [(done, total) for done, total, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for k, (_, _, giou) in enumerate(seen, start=1):
        assert giou == pytest.approx(sum(ious[:k]) / k, abs=1e-12)


class WaitingRedSegmenter(RedSegmenter):
    """Holds each call until the next sample's image has been read; an eval that reads only
    between model calls makes every call wait in vain."""

    def __init__(self, images_read, condition, total):
        super().__init__()
        self.images_read, self.condition, self.total = images_read, condition, total
        self.next_read_during_call: list[bool] = []

    def segment_pairs(self, windows, questions):
        following = len(self.next_read_during_call) + 1
        with self.condition:
            read = following >= self.total or self.condition.wait_for(
                lambda: len(self.images_read) > following, timeout=10)
        self.next_read_during_call.append(read)
        return super().segment_pairs(windows, questions)


def test_the_next_image_is_read_while_the_model_runs(tmp_path, monkeypatch):
    from segearth_cli import evaluate as evaluate_module

    truth = make_earthreason(tmp_path, nested=False, seed=0)
    samples = read_dataset(tmp_path, "earthreason", "val")
    images_read = []
    condition = threading.Condition()
    original_read = evaluate_module.read_rgb

    def read_rgb(path):
        rgb = original_read(path)
        with condition:
            images_read.append(path.stem)
            condition.notify_all()
        return rgb

    monkeypatch.setattr(evaluate_module, "read_rgb", read_rgb)
    segmenter = WaitingRedSegmenter(images_read, condition, len(samples))
    report = evaluate(samples, segmenter, dataset="earthreason", split="val")

    assert images_read == sorted(truth)
    assert segmenter.next_read_during_call == [True] * len(samples)
    # The same scores as read one after the other: those computed by hand.
    official = [(onto_canvas(truth[n][0], fitted(h, w)[2]), onto_canvas(truth[n][1], fitted(h, w)[2]))
                for n, h, w in sorted(SHAPES)]
    assert_protocol(report.official, official)
    assert_protocol(report.original_size, [(truth[n][0], truth[n][1]) for n, _, _ in sorted(SHAPES)])
    assert pipeline_threads() == []


def test_an_unreadable_image_fails_at_its_turn_and_stops_the_reader(tmp_path):
    truth = make_earthreason(tmp_path, seed=4)
    names = sorted(truth)
    (tmp_path / "val" / "images" / f"{names[2]}.png").write_bytes(b"not an image")
    samples = read_dataset(tmp_path, "earthreason", "val")
    segmenter = RedSegmenter()
    seen = []
    with pytest.raises(InputError, match=f"{names[2]}.png: cannot be read as an image"):
        evaluate(samples, segmenter, batch_size=1, progress=lambda done, total, giou: seen.append(done))
    # The samples before it were scored and reported, as when images were read one at a time.
    assert seen == [1, 2] and len(segmenter.calls) == 2
    assert pipeline_threads() == []


def test_json_document_has_exact_schema(tmp_path):
    make_earthreason(tmp_path, split="test")
    report = evaluate(read_dataset(tmp_path, "earthreason", "test"), RedSegmenter(), dataset="earthreason",
                      split="test")
    document = json.loads(json.dumps(report.to_json()))
    assert set(document) == {"dataset", "split", "n", "protocols"}
    assert (document["dataset"], document["split"], document["n"]) == ("earthreason", "test", len(SHAPES))
    assert set(document["protocols"]) == {"official", "original_size"}
    for protocol in document["protocols"].values():
        assert set(protocol) == {"giou", "ciou", "precision_at"}
        assert list(protocol["precision_at"]) == ["0.5", "0.6", "0.7", "0.8", "0.9"]
        assert all(isinstance(v, float) for v in [protocol["giou"], protocol["ciou"], *protocol["precision_at"].values()])


def test_earthreason_images_nested_deeper_than_labels(tmp_path):
    make_earthreason(tmp_path, nested=True)
    for name in ("labels", "QAs"):
        (tmp_path / "val" / "val" / name).rename(tmp_path / "val" / name)
    samples = read_dataset(tmp_path, "earthreason", "val")
    assert [s.target.path.parent for s in samples] == [tmp_path / "val" / "labels"] * len(SHAPES)


def test_official_data_path_layout_is_found(tmp_path):
    make_earthreason(tmp_path / "rs_reason_seg" / "RSReasonSeg")
    assert len(read_dataset(tmp_path, "earthreason", "val")) == len(SHAPES)


def test_earthreason_missing_label_is_named(tmp_path):
    make_earthreason(tmp_path)
    (tmp_path / "val" / "labels" / "bravo.png").unlink()
    (tmp_path / "val" / "labels" / "delta.png").unlink()
    with pytest.raises(InputError) as info:
        read_dataset(tmp_path, "earthreason", "val")
    message = str(info.value)
    assert str(tmp_path / "val" / "images" / "bravo.png") in message and "labels" in message
    assert "\n" not in message


def test_earthreason_unpaired_question_file_is_named(tmp_path):
    make_earthreason(tmp_path)
    (tmp_path / "val" / "QAs" / "zulu.json").write_text(json.dumps({"questions": ["?"]}))
    with pytest.raises(InputError, match="zulu.json"):
        read_dataset(tmp_path, "earthreason", "val")


def test_earthreason_missing_question_file_is_named(tmp_path):
    make_earthreason(tmp_path)
    (tmp_path / "val" / "QAs" / "alpha.json").unlink()
    with pytest.raises(InputError, match=r"alpha\.png: no question file"):
        read_dataset(tmp_path, "earthreason", "val")


def test_earthreason_missing_split_folder_is_named(tmp_path):
    make_earthreason(tmp_path, split="val")
    with pytest.raises(InputError, match=str(tmp_path / "test" / "images")):
        read_dataset(tmp_path, "earthreason", "test")


def test_earthreason_question_file_without_questions(tmp_path):
    make_earthreason(tmp_path)
    (tmp_path / "val" / "QAs" / "charlie.json").write_text(json.dumps({"answer": []}))
    with pytest.raises(InputError, match="charlie.json"):
        read_dataset(tmp_path, "earthreason", "val")


def test_unknown_dataset_or_split_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        read_dataset(tmp_path, "refcoco", "val")
    with pytest.raises(UsageError):
        read_dataset(tmp_path, "earthreason", "train")


# --------------------------------------------------------------------------- RefSegRS


def make_refsegrs(root: Path, split="val", seed=1):
    """RefSegRS layout; returns [(id, red mask, target mask, phrase)] in file order."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = [("17", 16, 8), ("3", 64, 48), ("250", 32, 32), ("8", 8, 16)]
    lines = ["not a sample line"]
    for ident, h, w in sizes:
        red = blocky(rng, h, w)
        # 255 and 1 are target; 128 (an anti-aliased edge, say) is not, as in the official reader.
        values = np.zeros((h, w), np.uint8)
        values[blocky(rng, h, w, 0.4)] = 255
        values[blocky(rng, h, w, 0.2)] = 128
        values[blocky(rng, h, w, 0.1)] = 1
        if ident == "8":
            values[:] = 0  # empty target
        write_rgb(root / "images" / f"{ident}.tif", red_image(red))
        write_grey(root / "masks" / f"{ident}.tif", values)
        phrase = f"the red roofs number {ident}"
        lines.append(f"{ident} {phrase}")
        rows.append((ident, red, (values == 255) | (values == 1), phrase, h, w))
    (root / f"output_phrase_{split}.txt").write_text("\n".join(lines) + "\n")
    return rows


def test_refsegrs_scores_equal_hand_computed(tmp_path):
    rows = make_refsegrs(tmp_path / "rs_ref_seg" / "RefSegRS")
    samples = read_dataset(tmp_path, "refsegrs", "val")
    assert [(s.name, s.question) for s in samples] == [(r[0], r[3]) for r in rows]
    report = evaluate(samples, RedSegmenter(), dataset="refsegrs", split="val")
    assert_protocol(report.official, [(onto_canvas(red, fitted(h, w)[2]), onto_canvas(t, fitted(h, w)[2]))
                                      for _, red, t, _, h, w in rows])
    assert_protocol(report.original_size, [(red, t) for _, red, t, _, _, _ in rows])


def test_refsegrs_missing_mask_is_named(tmp_path):
    make_refsegrs(tmp_path)
    (tmp_path / "masks" / "250.tif").unlink()
    with pytest.raises(InputError, match=str(tmp_path / "masks" / "250.tif")):
        read_dataset(tmp_path, "refsegrs", "val")


def test_refsegrs_missing_phrase_list_is_named(tmp_path):
    make_refsegrs(tmp_path, split="val")
    with pytest.raises(InputError, match="output_phrase_test.txt"):
        read_dataset(tmp_path, "refsegrs", "test")


# --------------------------------------------------------------------------- RRSIS-D


def column_runs(mask):
    """Run lengths of a mask read down the columns, starting with a (possibly empty) background run."""
    flat = np.asarray(mask, dtype=np.uint8).T.reshape(-1)
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return runs


def compact_text(runs):
    """COCO's compact run-length text, written from its published description."""
    out = []
    for i, value in enumerate(runs):
        if i > 2:
            value -= runs[i - 2]
        while True:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            out.append(chr(chunk + 48))
            if not more:
                break
    return "".join(out)


def make_rrsisd(root: Path, seed=2):
    """REFER layout; returns the val samples as [(name, red, target, sentence, h, w)] in file order."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    images, annotations, refs, expected = [], [], [], []
    specs = [  # image id, file, h, w, split, ann kind
        (11, "00011.png", 16, 8, "val", "text"),
        (12, "00012.png", 64, 48, "val", "list"),
        (13, "00013.png", 32, 32, "train", "text"),
        (14, "00014.png", 8, 16, "val", "overlap"),
        (15, "00015.png", 16, 16, "testA", "text"),
    ]
    for image_id, file_name, h, w, split, kind in specs:
        red = blocky(rng, h, w)
        write_rgb(image_dir / file_name, red_image(red))
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        target = blocky(rng, h, w, 0.4)
        if kind == "text":
            segmentation = [{"size": [h, w], "counts": compact_text(column_runs(target))}]
            truth = target
        elif kind == "list":
            segmentation = [{"size": [h, w], "counts": column_runs(target)}]
            truth = target
        else:
            other = blocky(rng, h, w, 0.4)
            segmentation = [{"size": [h, w], "counts": compact_text(column_runs(m))} for m in (target, other)]
            truth = target ^ other  # covered twice counts as background in the official reader
        annotations.append({"id": 100 + image_id, "image_id": image_id, "segmentation": segmentation})
        sentence = f"the building number {image_id}"
        refs.append({"ref_id": image_id, "ann_id": 100 + image_id, "image_id": image_id, "split": split,
                     "sentences": [{"raw": sentence, "sent": sentence.lower()}, {"raw": "unused", "sent": "unused"}]})
        if split == "val":
            expected.append([Path(file_name).stem, red, truth, sentence, h, w])
    # A second expression about image 12, with its own (empty) target.
    empty = np.zeros((64, 48), bool)
    annotations.append({"id": 999, "image_id": 12, "segmentation": [{"size": [64, 48], "counts": compact_text(column_runs(empty))}]})
    refs.append({"ref_id": 99, "ann_id": 999, "image_id": 12, "split": "val",
                 "sentences": [{"raw": "nothing at all", "sent": "nothing at all"}]})
    images_12 = next(e for e in expected if e[0] == "00012")
    expected.append(["00012", images_12[1], empty, "nothing at all", 64, 48])
    images_12[0] = "00012_1"
    expected[-1][0] = "00012_2"
    (root / "rrsisd").mkdir(parents=True)
    (root / "rrsisd" / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                                 "categories": [{"id": 1, "name": "building"}]}))
    with open(root / "rrsisd" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return expected


def test_rrsisd_scores_equal_hand_computed(tmp_path):
    expected = make_rrsisd(tmp_path / "RRSIS-D")
    samples = read_dataset(tmp_path, "rrsis-d", "val")
    assert [(s.name, s.question) for s in samples] == [(e[0], e[3]) for e in expected]
    for sample, (_, _, truth, _, _, _) in zip(samples, expected):
        np.testing.assert_array_equal(sample.target.load(), truth)
    report = evaluate(samples, RedSegmenter(), dataset="rrsis-d", split="val")
    assert_protocol(report.official, [(onto_canvas(red, fitted(h, w)[2]), onto_canvas(t, fitted(h, w)[2]))
                                      for _, red, t, _, h, w in expected])
    assert_protocol(report.original_size, [(red, t) for _, red, t, _, _, _ in expected])


def test_rrsisd_test_split_takes_every_test_subset(tmp_path):
    make_rrsisd(tmp_path)
    samples = read_dataset(tmp_path, "rrsis-d", "test")
    assert [s.question for s in samples] == ["the building number 15"]


def test_rrsisd_numpy_ids_in_pickle_are_read(tmp_path):
    expected = make_rrsisd(tmp_path)
    path = tmp_path / "rrsisd" / "refs(unc).p"
    with open(path, "rb") as handle:
        refs = pickle.load(handle)
    for ref in refs:
        for key in ("ref_id", "ann_id", "image_id"):
            ref[key] = np.int64(ref[key])
    with open(path, "wb") as handle:
        pickle.dump(refs, handle)
    assert [s.name for s in read_dataset(tmp_path, "rrsis-d", "val")] == [e[0] for e in expected]


def test_rrsisd_missing_image_is_named(tmp_path):
    make_rrsisd(tmp_path)
    (tmp_path / "images" / "rrsisd" / "JPEGImages" / "00014.png").unlink()
    with pytest.raises(InputError, match="00014.png"):
        read_dataset(tmp_path, "rrsis-d", "val")


def test_rrsisd_pickle_that_would_run_code_is_refused(tmp_path):
    make_rrsisd(tmp_path)
    with open(tmp_path / "rrsisd" / "refs(unc).p", "wb") as handle:
        pickle.dump([Path("x")], handle)
    with pytest.raises(InputError, match=r"refs\(unc\)\.p"):
        read_dataset(tmp_path, "rrsis-d", "val")


def test_rrsisd_missing_layout_is_named(tmp_path):
    with pytest.raises(InputError, match=r"rrsisd/refs\(unc\)\.p"):
        read_dataset(tmp_path, "rrsis-d", "val")


# --------------------------------------------------------------------------- the command


@pytest.fixture
def eval_cli(monkeypatch):
    """Runs `segearth eval ...` with the stand-in segmenter in place of a downloaded model.

    Returns (run(args) -> click Result, the model names the command asked for).
    """
    from typer.testing import CliRunner

    import segearth_cli.commands.eval as eval_module
    import segearth_cli.segmenter as segmenter_module
    from segearth_cli import cli

    asked = []

    def fake_loader(model, *, task, revision, device, dtype, quiet):
        asked.append((model, task))
        return RedSegmenter()

    monkeypatch.setattr(eval_module, "load_eval_segmenter", fake_loader)
    # The released tokenizers are not here; questions are checked against a stand-in's limits.
    monkeypatch.setattr(segmenter_module, "model_limits", lambda model, revision=None, task="auto": STAND_IN_LIMITS)
    runner = CliRunner()

    def run(args):
        return runner.invoke(cli.app, ["eval", *(str(a) for a in args)])

    return run, asked


def test_command_prints_the_json_document(tmp_path, eval_cli):
    run, asked = eval_cli
    truth = make_earthreason(tmp_path / "data")
    rows = tmp_path / "rows.csv"
    result = run([tmp_path / "data", "--dataset", "earthreason", "--split", "val", "--json", "--quiet",
                  "--per-sample", rows, "--limit", "3"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert asked == [("earth-insights/SegEarth-R1-EarthReason", "reasoning")]
    assert set(document) == {"dataset", "split", "n", "protocols"}
    assert (document["dataset"], document["split"], document["n"]) == ("earthreason", "val", 3)
    names = sorted(truth)[:3]
    giou, ciou, precision, _ = expected_scores([(truth[n][0], truth[n][1]) for n in names])
    original = document["protocols"]["original_size"]
    assert original["giou"] == pytest.approx(giou)
    assert original["ciou"] == pytest.approx(ciou)
    assert original["precision_at"] == pytest.approx({f"{t:g}": v for t, v in precision.items()})
    with open(rows, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_command_uses_referring_checkpoint_and_table(tmp_path, eval_cli):
    run, asked = eval_cli
    make_refsegrs(tmp_path)
    result = run([tmp_path, "--dataset", "refsegrs", "--split", "val", "--quiet"])
    assert result.exit_code == 0, result.output
    assert asked == [("earth-insights/SegEarth-R1-RefSegRS", "referring")]
    assert "official" in result.stdout and "original_size" in result.stdout and "gIoU" in result.stdout


def test_command_reports_layout_error_before_loading_model(tmp_path, eval_cli):
    run, asked = eval_cli
    make_earthreason(tmp_path)
    (tmp_path / "val" / "labels" / "alpha.png").unlink()
    result = run([tmp_path, "--dataset", "earthreason", "--json"])
    assert isinstance(result.exception, InputError) and "alpha.png" in str(result.exception)
    assert asked == []


def test_outputs_that_cannot_be_written_are_refused_before_loading_model(tmp_path, eval_cli, unwritable_folder):
    run, asked = eval_cli
    make_earthreason(tmp_path / "data")
    (tmp_path / "a_file").write_text("")
    for option, path, expected in [
        ("--per-sample", tmp_path / "absent" / "rows.csv", "absent does not exist"),
        ("--per-sample", unwritable_folder / "rows.csv", "locked is not writable"),
        ("--save-predictions", tmp_path / "a_file" / "predictions", "a_file is not a folder"),
        ("--save-predictions", unwritable_folder / "predictions", "locked is not writable"),
    ]:
        result = run([tmp_path / "data", "--dataset", "earthreason", "--json", option, path])
        assert isinstance(result.exception, OutputError) and expected in str(result.exception), result.output
        assert str(result.exception).startswith(f"{option} {path}")
    assert asked == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "data", "locked"]


@pytest.mark.parametrize(("question", "expected"), [
    ("   ", "the question of sample alpha is empty"),
    ("word " * 41, "the question of sample alpha is 41 tokens long; the model reads at most 40"),
])
def test_a_question_no_model_can_read_is_refused_before_loading_model(tmp_path, eval_cli, question, expected):
    run, asked = eval_cli
    make_earthreason(tmp_path)
    qa = tmp_path / "val" / "QAs" / "alpha.json"
    qa.write_text(json.dumps({"questions": [question]}))
    result = run([tmp_path, "--dataset", "earthreason", "--json"])
    assert isinstance(result.exception, InputError), result.output
    assert str(result.exception) == f"{qa}: {expected}"
    assert asked == []


def test_per_sample_writes_through_a_symlink_and_into_a_pipe(tmp_path, eval_cli):
    run, _ = eval_cli
    make_earthreason(tmp_path / "data")
    (tmp_path / "kept").mkdir()
    (tmp_path / "rows.csv").symlink_to(tmp_path / "kept" / "rows.csv")
    result = run([tmp_path / "data", "--dataset", "earthreason", "--json", "--per-sample", tmp_path / "rows.csv"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rows.csv").is_symlink()  # written through, not replaced
    rows = (tmp_path / "kept" / "rows.csv").read_text().splitlines()
    assert rows[0].startswith("sample,image,question") and len(rows) == 1 + len(SHAPES)

    # A named pipe (as /dev/stdout may be) is written as it is, not replaced by a file.
    pipe = tmp_path / "rows.pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    result = run([tmp_path / "data", "--dataset", "earthreason", "--json", "--per-sample", pipe])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert pipe.is_fifo() and received[0].splitlines() == rows


def test_repeated_names_are_numbered_around_names_already_taken():
    assert _unique_names(["a", "b", "a", "a_1", "a"]) == ["a_2", "b", "a_3", "a_1", "a_4"]
    assert _unique_names(["a_1", "a_1", "a"]) == ["a_1_1", "a_1_2", "a"]


def _rewrite_rrsisd(root: Path, change_refs=None, change_instances=None) -> None:
    refs_path, instances_path = root / "rrsisd" / "refs(unc).p", root / "rrsisd" / "instances.json"
    with open(refs_path, "rb") as handle:
        refs = pickle.load(handle)
    instances = json.loads(instances_path.read_text())
    if change_refs:
        change_refs(refs)
    if change_instances:
        change_instances(instances)
    with open(refs_path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    instances_path.write_text(json.dumps(instances))


def test_rrsisd_records_of_the_wrong_kind_are_input_errors_naming_the_file(tmp_path):
    make_rrsisd(tmp_path)
    _rewrite_rrsisd(tmp_path, change_refs=lambda refs: refs[0]["sentences"][0].update(raw=None))
    with pytest.raises(InputError, match=r"refs\(unc\)\.p: expression 11: the raw sentence is NoneType, not text"):
        read_dataset(tmp_path, "rrsis-d", "val")

    make_rrsisd(tmp_path / "second")
    _rewrite_rrsisd(tmp_path / "second", change_instances=lambda inst: inst["images"][0].update(file_name=5))
    with pytest.raises(InputError, match="instances.json: image record 11 has no file name"):
        read_dataset(tmp_path / "second", "rrsis-d", "val")


@pytest.mark.parametrize(("segmentation", "expected"), [
    ([{"size": [16, 8], "counts": ["x", "y"]}], "neither COCO's compact text nor whole numbers"),
    ([{"size": [0, 0], "counts": []}], "run-length segmentation of 0x0 pixels"),
])
def test_rrsisd_run_lengths_that_are_no_mask_are_input_errors(tmp_path, segmentation, expected):
    make_rrsisd(tmp_path)

    def damage(instances):
        instances["annotations"][0]["segmentation"] = segmentation

    _rewrite_rrsisd(tmp_path, change_instances=damage)
    sample = read_dataset(tmp_path, "rrsis-d", "val")[0]
    with pytest.raises(InputError, match=f"instances.json annotation 111: .*{expected}"):
        sample.target.load()


@pytest.mark.parametrize("error_name", ["ModelNotAvailableError", "CheckpointError"])
def test_unavailable_model_exits_4(monkeypatch, error_name):
    import segearth_model
    import segearth_model.errors as model_errors

    from segearth_cli.commands.eval import load_eval_segmenter
    from segearth_cli.errors import ModelUnavailableError

    def refuse(name, **kwargs):
        raise getattr(model_errors, error_name)(f"{name}: not in the cache and downloads are off")

    monkeypatch.setattr(segearth_model, "load_pretrained", refuse)
    with pytest.raises(ModelUnavailableError) as info:
        load_eval_segmenter("earth-insights/SegEarth-R1-RRSIS-D", task="referring", revision=None, device="cpu",
                            dtype="float32", quiet=True)
    assert info.value.exit_code == 4
    assert "earth-insights/SegEarth-R1-RRSIS-D" in str(info.value)
