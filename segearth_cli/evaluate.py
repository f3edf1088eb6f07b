"""`segearth eval`: the paper's benchmark protocol on EarthReason, RRSIS-D and RefSegRS.

Everything here works without the command line: read a data set with :func:`read_dataset`,
run :func:`evaluate` with any :class:`~segearth_cli.segmenter.Segmenter`, and read the
scores from the returned :class:`EvalReport` (or accumulate your own with
:class:`IoUAccumulator`).

Two protocols are scored in one pass:

``official``
    What the published numbers measure. The image is resized so its long side is the
    model input size (short side truncated), centred on a zero canvas; the ground truth is
    resized with nearest neighbour and padded the same way; the prediction is the logit
    map thresholded at 0. Pixels are compared on the whole square canvas, so a prediction
    inside the padding is a false positive.
``original_size``
    What a user of ``segearth query --mode whole`` gets, computed by the same functions: the
    canvas is made as ``query`` makes it, the padding is cut off, the logits are resized
    back to the ground truth's own size (bilinear, the official original-size rule),
    thresholded at 0 and compared there.

Metrics, as the official evaluation computes them: per sample ``IoU = I / (U + 1e-5)``
with ``IoU = 1`` when prediction and target are both empty (``U == 0``); gIoU is the mean
IoU over samples; cIoU is ``sum(I) / (sum(U) + 1e-10)``; Pr@t is the fraction of samples
with ``IoU > t`` (strictly) for t in 0.5 ... 0.9. Counts are kept as exact integers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
import re
import stat
import threading
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar, Union

import cv2
import numpy as np

from .atomic import check_target_writable, future_folder_problem, write_atomically
from .errors import InputError, OutputError, UsageError
from .scene import canvas_rgb
from .segmenter import PadInfo, Segmenter, fitted_size, resize_mask_nearest
from .stitch import logits_to_footprint
from .windows import Window, whole_window

log = logging.getLogger("segearth_cli.evaluate")

DATASETS = ("earthreason", "rrsis-d", "refsegrs")
SPLITS = ("val", "test")
#: The prompt template each data set was trained and evaluated with.
DATASET_TASK = {"earthreason": "reasoning", "rrsis-d": "referring", "refsegrs": "referring"}
#: The released checkpoint that produced each data set's published numbers.
DATASET_MODEL = {
    "earthreason": "earth-insights/SegEarth-R1-EarthReason",
    "rrsis-d": "earth-insights/SegEarth-R1-RRSIS-D",
    "refsegrs": "earth-insights/SegEarth-R1-RefSegRS",
}
T = TypeVar("T")
R = TypeVar("R")

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
IOU_EPS = 1e-5
CIOU_EPS = 1e-10

_EARTHREASON_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_EARTHREASON_LABEL_EXT = (".png",)
_EARTHREASON_QA_EXT = (".json", ".txt")


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class LabelFile:
    """A ground-truth raster on disk and which grey values count as target."""

    path: Path
    #: "nonzero": any non-zero pixel (EarthReason). "refsegrs": values 1 and 255 only; the
    #: official reader maps 255 to 1 and leaves every other value outside the two classes
    #: it counts, which makes them background for the target's IoU.
    rule: str = "nonzero"

    def load(self) -> np.ndarray:
        grey = cv2.imread(str(self.path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise InputError(f"{self.path}: cannot be read as an image")
        if self.rule == "refsegrs":
            return (grey == 1) | (grey == 255)
        return grey != 0


@dataclass(frozen=True)
class RleTarget:
    """A COCO-style segmentation from an ``instances.json`` (RRSIS-D)."""

    segmentation: object
    source: str

    def load(self) -> np.ndarray:
        return _segmentation_to_target(self.segmentation, self.source)


@dataclass(frozen=True)
class Sample:
    """One evaluation item: an image, the question asked about it, and its ground truth."""

    #: Unique within the data set; predictions and CSV rows are named after it.
    name: str
    image_path: Path
    question: str
    target: Union[LabelFile, RleTarget]
    #: Where the question was read (a file, with the line or record), for error messages.
    question_source: str = ""


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, read the way the official evaluation reads it (OpenCV, BGR -> RGB)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: cannot be read as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_choice(value: str, choices: Sequence[str], what: str) -> str:
    value = value.lower()
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def read_dataset(root: Path, dataset: str, split: str) -> list[Sample]:
    """The samples of ``dataset``/``split`` under ``root``, in the official evaluation order."""
    dataset = _check_choice(dataset, DATASETS, "data set")
    split = _check_choice(split, SPLITS, "split")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data root is not a directory")
    if dataset == "earthreason":
        return read_earthreason(root, split)
    if dataset == "rrsis-d":
        return read_rrsisd(root, split)
    return read_refsegrs(root, split)


def _unique_names(stems: Sequence[str]) -> list[str]:
    """Keep each stem as it is unless it repeats (several expressions about one image); a
    repeated stem is numbered ``_1``, ``_2``, ... skipping numbers that another name already
    is (``a``, ``a`` and ``a_1`` become ``a_2``, ``a_3`` and ``a_1``)."""
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    taken = {stem for stem, count in counts.items() if count == 1}
    last: dict[str, int] = {}
    names = []
    for stem in stems:
        if counts[stem] == 1:
            names.append(stem)
            continue
        number = last.get(stem, 0) + 1
        while f"{stem}_{number}" in taken:
            number += 1
        last[stem] = number
        taken.add(f"{stem}_{number}")
        names.append(f"{stem}_{number}")
    return names


# ---- EarthReason


def _earthreason_split_dir(root: Path, split: str) -> Path:
    # The official code reads <base>/rs_reason_seg/RSReasonSeg/<split>; the published archive
    # may unpack with the split folder twice; a user may also point at the split itself.
    bases = [root, root / "RSReasonSeg", root / "rs_reason_seg" / "RSReasonSeg"]
    candidates = []
    for base in bases:
        candidates += [base / split, base / split / split]
    if root.name == split:
        candidates.append(root)
    for candidate in candidates:
        if (candidate / "images").is_dir():
            return candidate
    raise InputError(f"{root / split / 'images'}: EarthReason image folder not found (also looked for "
                     f"{split}/{split}/images and rs_reason_seg/RSReasonSeg/{split}/images)")


def _listed(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    if not directory.is_dir():
        raise InputError(f"{directory}: folder not found")
    files = [p for p in directory.iterdir() if p.is_file() and p.name.lower().endswith(extensions)]
    # Sorted by full path and paired by position, as the official reader does.
    return sorted(files, key=lambda p: str(p))


def _first_question(qa_path: Path) -> str:
    try:
        qa = json.loads(qa_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{qa_path}: not a readable JSON question file ({exc})") from None
    questions = qa.get("questions") if isinstance(qa, dict) else None
    if not isinstance(questions, list) or not questions or not isinstance(questions[0], str):
        raise InputError(f"{qa_path}: no \"questions\" list with a first question")
    return questions[0]


def read_earthreason(root: Path, split: str) -> list[Sample]:
    """``{split}/images``, ``{split}/labels`` and ``{split}/QAs``, paired by sorted file name."""
    split_dir = _earthreason_split_dir(Path(root), split)
    images = _listed(split_dir / "images", _EARTHREASON_IMAGE_EXT)
    # Archives seen in the wild nest images one level deeper than labels and QAs, or the reverse.
    other = split_dir.parent if split_dir.parent.name == split_dir.name else split_dir / split
    labels_dir, qas_dir = (
        next((d / name for d in (split_dir, other) if (d / name).is_dir()), split_dir / name)
        for name in ("labels", "QAs")
    )
    labels = _listed(labels_dir, _EARTHREASON_LABEL_EXT)
    qas = _listed(qas_dir, _EARTHREASON_QA_EXT)
    if not images:
        raise InputError(f"{split_dir / 'images'}: no .jpg, .jpeg or .png images")

    for kind, files in (("image", images), ("label", labels), ("QA file", qas)):
        seen: set[str] = set()
        duplicate = next((p for p in files if p.stem in seen or seen.add(p.stem)), None)
        if duplicate is not None:
            raise InputError(f"{duplicate}: another {kind} has the same name; pairing would be ambiguous")
    label_stems = {p.stem for p in labels}
    qa_stems = {p.stem for p in qas}
    image_stems = {p.stem for p in images}
    for image in images:
        if image.stem not in label_stems:
            raise InputError(f"{image}: no label {labels_dir / (image.stem + '.png')}")
        if image.stem not in qa_stems:
            raise InputError(f"{image}: no question file {qas_dir / (image.stem + '.json')}")
    orphan = next((p for p in labels + qas if p.stem not in image_stems), None)
    if orphan is not None:
        raise InputError(f"{orphan}: no image with this name in {split_dir / 'images'}")
    # Same stems everywhere; positional pairing (the official rule) must then agree with them.
    for image, label, qa in zip(images, labels, qas):
        if not image.stem == label.stem == qa.stem:
            raise InputError(f"{image}: sorts against {label.name} and {qa.name}; rename so all three sort alike")

    return [
        Sample(name=image.stem, image_path=image, question=_first_question(qa), target=LabelFile(label, "nonzero"),
               question_source=str(qa))
        for image, label, qa in zip(images, labels, qas)
    ]


# ---- RefSegRS

_PHRASE_LINE = re.compile(r"(\d+)\s+(.*)")


def _refsegrs_dir(root: Path, split: str) -> Path:
    for candidate in (root, root / "RefSegRS", root / "rs_ref_seg" / "RefSegRS"):
        if (candidate / f"output_phrase_{split}.txt").is_file():
            return candidate
    raise InputError(f"{root / f'output_phrase_{split}.txt'}: RefSegRS phrase list not found "
                     f"(also looked in RefSegRS/ and rs_ref_seg/RefSegRS/)")


def read_refsegrs(root: Path, split: str) -> list[Sample]:
    """``output_phrase_{split}.txt`` lines ``<id> <phrase>``, with ``images/<id>.tif`` and ``masks/<id>.tif``."""
    base = _refsegrs_dir(Path(root), split)
    phrases_path = base / f"output_phrase_{split}.txt"
    try:
        lines = phrases_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{phrases_path}: cannot be read ({exc})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        # Lines that do not start with a numeric id are skipped, as the official reader does.
        match = _PHRASE_LINE.match(line.strip())
        if match:
            entries.append((match.group(1), match.group(2), number))
    if not entries:
        raise InputError(f"{phrases_path}: no '<id> <phrase>' lines")
    samples = []
    names = _unique_names([ident for ident, _, _ in entries])
    for name, (ident, phrase, number) in zip(names, entries):
        image, mask = base / "images" / f"{ident}.tif", base / "masks" / f"{ident}.tif"
        if not image.is_file():
            raise InputError(f"{image}: missing (listed in {phrases_path.name})")
        if not mask.is_file():
            raise InputError(f"{mask}: missing (listed in {phrases_path.name})")
        samples.append(Sample(name=name, image_path=image, question=phrase, target=LabelFile(mask, "refsegrs"),
                              question_source=f"{phrases_path}: line {number}"))
    return samples


# ---- RRSIS-D


class _PlainDataUnpickler(pickle.Unpickler):
    """A referring-expression pickle holds lists and dicts of plain values, perhaps numpy
    numbers; anything else could import and run code, so it is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}")


def _rrsisd_dir(root: Path) -> Path:
    for candidate in (root, root / "RRSIS-D", root / "rs_ref_seg" / "RRSIS-D"):
        if (candidate / "rrsisd" / "refs(unc).p").is_file():
            return candidate
    raise InputError(f"{root / 'rrsisd' / 'refs(unc).p'}: RRSIS-D expressions not found "
                     f"(also looked in RRSIS-D/ and rs_ref_seg/RRSIS-D/)")


def read_rrsisd(root: Path, split: str) -> list[Sample]:
    """REFER layout: ``rrsisd/refs(unc).p``, ``rrsisd/instances.json``, ``images/rrsisd/JPEGImages``.

    One sample per expression record of the split, in file order, with its first sentence;
    ``test`` takes every record whose split name contains "test", as REFER does.
    """
    base = _rrsisd_dir(Path(root))
    refs_path = base / "rrsisd" / "refs(unc).p"
    instances_path = base / "rrsisd" / "instances.json"
    image_dir = base / "images" / "rrsisd" / "JPEGImages"
    chosen = _rrsisd_expressions(refs_path, split)
    annotations, images = _rrsisd_instances(instances_path)
    mismatched = sum(1 for ref_id, _, image_id, _ in chosen if ref_id != image_id)
    if mismatched:
        log.warning("%s: %d of %d expressions have an id different from their image's; the official reader "
                    "looks images up by expression id, so its scores for them may differ", refs_path, mismatched,
                    len(chosen))
    entries = []
    stems = []
    for ref_id, ann_id, image_id, sentence in chosen:
        # The official reader looks the image up by the expression's id; RRSIS-D gives every
        # expression the id of its image, so the image id is the same lookup, stated correctly.
        image = images.get(image_id)
        if image is None or "file_name" not in image:
            raise InputError(f"{instances_path}: no image record {image_id} for expression {ref_id}")
        if not isinstance(image["file_name"], str) or not image["file_name"].strip():
            raise InputError(f"{instances_path}: image record {image_id} has no file name (file_name is "
                             f"{image['file_name']!r})")
        annotation = annotations.get(ann_id)
        if annotation is None or "segmentation" not in annotation:
            raise InputError(f"{instances_path}: no annotation {ann_id} for expression {ref_id}")
        image_path = image_dir / image["file_name"]
        if not image_path.is_file():
            raise InputError(f"{image_path}: missing (image of expression {ref_id})")
        stems.append(Path(image["file_name"]).stem)
        target = RleTarget(annotation["segmentation"], f"{instances_path} annotation {ann_id}")
        entries.append((image_path, sentence, target, f"{refs_path}: expression {ref_id}"))
    return [
        Sample(name=name, image_path=path, question=sentence, target=target, question_source=source)
        for name, (path, sentence, target, source) in zip(_unique_names(stems), entries)
    ]


def _rrsisd_expressions(refs_path: Path, split: str) -> list[tuple]:
    """(ref id, annotation id, image id, first sentence) of every expression record of ``split``."""
    try:
        with open(refs_path, "rb") as handle:
            refs = _PlainDataUnpickler(handle, encoding="utf-8").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{refs_path}: not a readable expression list ({exc})") from None
    if not isinstance(refs, list):
        raise InputError(f"{refs_path}: expected a list of expression records")
    chosen = []
    for ref in refs:
        try:
            ref_split = ref["split"]
            if not ((split == "test" and "test" in ref_split) or ref_split == split):
                continue
            record = (ref["ref_id"], ref["ann_id"], ref["image_id"], ref["sentences"][0]["raw"])
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{refs_path}: an expression record lacks split, ids or a raw sentence") from None
        if not isinstance(record[3], str):
            raise InputError(f"{refs_path}: expression {record[0]}: the raw sentence is {type(record[3]).__name__}, "
                             "not text")
        chosen.append(record)
    if not chosen:
        raise InputError(f"{refs_path}: no expressions in split {split!r}")
    return chosen


def _rrsisd_instances(instances_path: Path) -> tuple[dict, dict]:
    """(annotations by id, images by id) of a COCO-style instances file."""
    if not instances_path.is_file():
        raise InputError(f"{instances_path}: missing")
    try:
        instances = json.loads(instances_path.read_text(encoding="utf-8"))
        annotations = {ann["id"]: ann for ann in instances["annotations"]}
        images = {img["id"]: img for img in instances["images"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{instances_path}: not a COCO-style instances file ({exc})") from None
    return annotations, images


def _decode_rle_string(counts: str, source: str) -> list[int]:
    """COCO's compact run-length text: 5 bits per character (offset 48), bit 0x20 continues a
    number, bit 0x10 of the last character is the sign; from the third run on, each value is
    stored as a difference to the run two places earlier."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = 0
        shift = 0
        while True:
            if position >= len(counts):
                raise InputError(f"{source}: run-length text ends inside a number")
            code = ord(counts[position]) - 48
            position += 1
            value |= (code & 0x1F) << shift
            shift += 5
            if not code & 0x20:
                if code & 0x10:
                    value -= 1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_to_mask(rle: dict, source: str) -> np.ndarray:
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{source}: run-length segmentation lacks size or counts") from None
    if height < 1 or width < 1:
        raise InputError(f"{source}: run-length segmentation of {height}x{width} pixels")
    try:
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        runs = _decode_rle_string(counts, source) if isinstance(counts, str) else [int(c) for c in counts]
    except (TypeError, ValueError, UnicodeDecodeError):
        raise InputError(f"{source}: run-length counts are neither COCO's compact text nor whole numbers") from None
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise InputError(f"{source}: run lengths do not cover a {height}x{width} mask")
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1  # runs alternate background, foreground, starting with background
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T  # runs go down the columns


def _segmentation_to_target(segmentation: object, source: str) -> np.ndarray:
    # The official reader sums the decoded parts into uint8 and keeps value 1 as the target;
    # a pixel covered by two parts gets 2, which its two-class count leaves out, i.e. background.
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    if not parts:
        raise InputError(f"{source}: empty segmentation")
    if not all(isinstance(part, dict) for part in parts):
        raise InputError(f"{source}: polygon segmentations are not supported; RRSIS-D stores run-length masks")
    masks = [_rle_to_mask(part, source) for part in parts]
    if any(m.shape != masks[0].shape for m in masks):
        raise InputError(f"{source}: segmentation parts differ in size")
    total = np.zeros(masks[0].shape, dtype=np.uint8)
    for mask in masks:
        total += mask  # uint8 wrap-around, as in the official reader
    return total == 1


# --------------------------------------------------------------------------- metrics


def intersection_and_union(prediction: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Target-class pixel counts of two boolean masks of the same shape."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    intersection = int(np.count_nonzero(prediction & target))
    union = int(np.count_nonzero(prediction | target))
    return intersection, union


def sample_iou(intersection: int, union: int) -> float:
    """The official per-sample IoU: ``I / (U + 1e-5)``, and 1 when both masks are empty."""
    return 1.0 if union == 0 else intersection / (union + IOU_EPS)


class IoUAccumulator:
    """gIoU, cIoU and Pr@t over a stream of samples, as the official evaluation defines them."""

    def __init__(self, thresholds: Sequence[float] = PRECISION_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.count = 0
        self.iou_sum = 0.0
        self.intersection_sum = 0
        self.union_sum = 0
        self._above = {t: 0 for t in self.thresholds}

    def add(self, prediction: np.ndarray, target: np.ndarray) -> tuple[int, int, float]:
        """Score one sample from boolean masks; returns ``(I, U, IoU)``."""
        intersection, union = intersection_and_union(prediction, target)
        return intersection, union, self.add_counts(intersection, union)

    def add_counts(self, intersection: int, union: int) -> float:
        """Score one sample from its pixel counts; returns its IoU."""
        iou = sample_iou(intersection, union)
        self.count += 1
        self.iou_sum += iou
        self.intersection_sum += intersection
        self.union_sum += union
        for threshold in self.thresholds:
            if iou > threshold:
                self._above[threshold] += 1
        return iou

    @property
    def giou(self) -> float:
        return self.iou_sum / self.count if self.count else math.nan

    @property
    def ciou(self) -> float:
        return self.intersection_sum / (self.union_sum + CIOU_EPS) if self.count else math.nan

    def precision_at(self, threshold: float) -> float:
        return self._above[threshold] / self.count if self.count else math.nan

    def summary(self) -> dict:
        """``{"giou", "ciou", "precision_at": {"0.5": ...}}`` (fractions, not percent)."""
        return {
            "giou": self.giou,
            "ciou": self.ciou,
            "precision_at": {f"{t:g}": self.precision_at(t) for t in self.thresholds},
        }


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class SampleResult:
    name: str
    image: str
    question: str
    #: Per protocol: (intersection, union, IoU).
    official: tuple[int, int, float]
    original_size: tuple[int, int, float]


@dataclass
class EvalReport:
    dataset: str
    split: str
    model: str
    samples: list[SampleResult] = field(default_factory=list)
    official: IoUAccumulator = field(default_factory=IoUAccumulator)
    original_size: IoUAccumulator = field(default_factory=IoUAccumulator)

    @property
    def n(self) -> int:
        return self.official.count

    def to_json(self) -> dict:
        """The ``--json`` document."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "n": self.n,
            "protocols": {"official": self.official.summary(), "original_size": self.original_size.summary()},
        }


#: Called after each sample with (samples done, samples in total, running official gIoU).
ProgressCallback = Callable[[int, int, float], None]


def _label_on_canvas(label_shape: tuple[int, int], size: int) -> PadInfo:
    """Canvas placement of the ground truth.

    The official reader resizes the label on its own, so a label whose size differs from its
    image's is placed by its own dimensions on the canvas.
    """
    height, width = label_shape
    new_h, new_w = fitted_size(height, width, size)
    return PadInfo(top=(size - new_h) // 2, left=(size - new_w) // 2, new_h=new_h, new_w=new_w,
                   orig_h=height, orig_w=width, size=size)


def original_size_mask(logits: np.ndarray, window: Window, height: int, width: int) -> np.ndarray:
    """The answer at ``height`` x ``width`` to canvas logits (S, S) of ``window``, as ``query`` maps it back.

    The destination rectangle is cut out and :func:`~segearth_cli.stitch.logits_to_footprint`
    resizes it; a pixel answers where its logit is above 0 (probability above 0.5).
    """
    rows, cols = window.dst_slices
    return logits_to_footprint(logits[None, rows, cols], height, width)[0] > 0


def _predict(segmenter: Segmenter, canvases: list[np.ndarray], questions: list[str]) -> np.ndarray:
    """(B, S, S) float32 logits, one per (canvas, question) pair, in one model call."""
    windows = np.stack(canvases)
    size = segmenter.input_size
    logits = np.asarray(segmenter.segment_pairs(windows, list(questions)))
    expected = (len(canvases), size, size)
    if logits.shape != expected:
        raise ValueError(f"{segmenter.name}: segment_pairs returned {logits.shape}, expected {expected}")
    return logits.astype(np.float32, copy=False)


def _write_mask_png(directory: Path, name: str, mask: np.ndarray) -> None:
    path = directory / f"{name}.png"
    try:
        ok = cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
    except cv2.error as exc:
        raise OutputError(f"{path}: cannot be written ({exc})") from None
    if not ok:
        raise OutputError(f"{path}: cannot be written")


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: Batches of samples read and made into canvases ahead of the model: the next one is ready
#: when the model is free, and one more absorbs an image slower to decode than the rest.
READ_AHEAD_BATCHES = 2


def _canvases(batch: Sequence[Sample], size: int) -> tuple[list[np.ndarray], list[Window]]:
    """The model canvases of a batch's images, and the window each image took on its canvas."""
    canvases, windows = [], []
    for sample in batch:
        rgb = read_rgb(sample.image_path)
        window = whole_window(rgb.shape[1], rgb.shape[0], size)
        canvases.append(canvas_rgb(rgb.transpose(2, 0, 1), window))
        windows.append(window)
    return canvases, windows


def _made_ahead(items: Sequence[T], make: Callable[[T], R], depth: int) -> Iterator[R]:
    """``make(item)`` for every item in order, made in a background thread at most ``depth`` items ahead.

    Image decoding and resizing release the GIL, so they overlap the model. An exception of
    ``make`` is raised here when its item's turn comes, as if it had been made here; close
    the generator (or exhaust it) to stop the thread.
    """
    condition = threading.Condition()
    made: deque[tuple[Optional[R], Optional[Exception]]] = deque()
    stopped = False

    def work() -> None:
        for item in items:
            with condition:
                condition.wait_for(lambda: stopped or len(made) < depth)
                if stopped:
                    return
            try:
                outcome = (make(item), None)
            except Exception as exc:  # noqa: BLE001 - raised in the consumer at this item's turn
                outcome = (None, exc)
            with condition:
                made.append(outcome)
                condition.notify_all()
            if outcome[1] is not None:
                return

    thread = threading.Thread(target=work, name="segearth-eval-read", daemon=True)
    thread.start()
    try:
        for _ in items:
            with condition:
                condition.wait_for(lambda: bool(made))
                result, error = made.popleft()
                condition.notify_all()
            if error is not None:
                raise error
            yield result
    finally:
        with condition:
            stopped = True
            condition.notify_all()
        thread.join()


def evaluate(
    samples: Sequence[Sample],
    segmenter: Segmenter,
    *,
    dataset: str = "",
    split: str = "",
    limit: Optional[int] = None,
    batch_size: int = 1,
    save_predictions: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
) -> EvalReport:
    """Run ``segmenter`` on ``samples`` and score both protocols.

    The segmenter must already use the data set's prompt template (:data:`DATASET_TASK`).
    Its ``input_size`` is the canvas side (1024 for SegEarth-R1). ``save_predictions`` gets
    one ``<sample name>.png`` per sample: the thresholded canvas mask, 0/255.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        samples = samples[:limit]
    if save_predictions is not None:
        save_predictions = Path(save_predictions)
        try:
            save_predictions.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{save_predictions}: cannot create the predictions folder ({exc.strerror})") from None
    size = int(segmenter.input_size)
    report = EvalReport(dataset=dataset, split=split, model=getattr(segmenter, "name", ""))
    total = len(samples)
    batches = list(_batches(samples, batch_size))
    with closing(_made_ahead(batches, lambda batch: _canvases(batch, size), READ_AHEAD_BATCHES)) as made:
        for batch, (canvases, windows) in zip(batches, made):
            logits = _predict(segmenter, canvases, [s.question for s in batch])
            for sample, window, sample_logits in zip(batch, windows, logits):
                target = sample.target.load()
                predicted = sample_logits > 0
                official = report.official.add(predicted,
                                               resize_mask_nearest(target, _label_on_canvas(target.shape, size)))
                original = report.original_size.add(original_size_mask(sample_logits, window, *target.shape), target)
                report.samples.append(SampleResult(sample.name, sample.image_path.name, sample.question, official,
                                                   original))
                if save_predictions is not None:
                    _write_mask_png(save_predictions, sample.name, predicted)
                if progress is not None:
                    progress(report.n, total, report.official.giou)
    return report


def check_questions(samples: Sequence[Sample], limits) -> None:
    """Refuse, before the model loads, a question no model can read: empty, or longer than
    ``limits`` (a :class:`~segearth_cli.segmenter.ModelLimits`) allow. The message names the
    file (and line or record) the question came from: the data set is wrong, not the command.

    Other text (control characters included) goes to the model as the official evaluation
    passes it.
    """
    for sample in samples:
        source = sample.question_source or str(sample.image_path)
        if not sample.question.strip():
            raise InputError(f"{source}: the question of sample {sample.name} is empty")
        tokens = limits.count_tokens(sample.question)
        if tokens > limits.question_room:
            raise InputError(f"{source}: the question of sample {sample.name} is {tokens:,} tokens long; the model "
                             f"reads at most {limits.question_room:,}")


def check_outputs(root: Path, per_sample: Optional[Path], save_predictions: Optional[Path]) -> None:
    """Refuse, before any work, outputs that cannot be written or that lie inside the data set.

    The data set folder holds only inputs (images, labels, question and annotation files,
    under names a prediction or a CSV could take), so nothing is ever written inside it.
    """
    data = Path(os.path.realpath(root))
    for option, path in (("--per-sample", per_sample), ("--save-predictions", save_predictions)):
        if path is None:
            continue
        real = Path(os.path.realpath(path))
        if real == data or data in real.parents:
            raise UsageError(f"{option} {path}: is inside the data set {root}, which eval never writes into; "
                             "choose a path outside it")
    if per_sample is not None and not _is_stream(per_sample):
        try:
            check_target_writable(_followed(per_sample), overwrite=True)
        except OutputError as exc:
            raise OutputError(f"--per-sample {exc.message}") from None
    if save_predictions is not None:
        folder = Path(save_predictions)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--save-predictions {save_predictions}: is a file, not a folder")
        # The folder is made when scoring starts, in the nearest folder that exists now.
        _, problem = future_folder_problem(folder)
        if problem is not None:
            raise OutputError(f"--save-predictions {save_predictions}: {problem}")


PER_SAMPLE_COLUMNS = (
    "sample", "image", "question",
    "official_intersection", "official_union", "official_iou",
    "original_size_intersection", "original_size_union", "original_size_iou",
)


def _is_stream(path: Path) -> bool:
    """``/dev/stdout``, a named pipe or another file that is not a regular one: written as it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _followed(path: Path) -> Path:
    """The file a symlink names (written through, not replaced), or ``path`` itself."""
    return Path(os.path.realpath(path))


def write_per_sample_csv(path: Path, results: Sequence[SampleResult]) -> None:
    """One row per sample with both protocols' counts and IoU; written whole or not at all to a
    file (through a symlink to the file it names), as it comes to a stream such as ``/dev/stdout``."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(PER_SAMPLE_COLUMNS)
    for r in results:
        writer.writerow([r.name, r.image, r.question, *r.official[:2], f"{r.official[2]:.6f}",
                         *r.original_size[:2], f"{r.original_size[2]:.6f}"])
    if _is_stream(path):
        try:
            with open(path, "w", newline="", encoding="utf-8") as stream:
                stream.write(text.getvalue())
        except OSError as exc:
            raise OutputError(f"--per-sample {path}: cannot be written ({exc.strerror or exc})") from None
        return
    write_atomically(_followed(path), text.getvalue())
