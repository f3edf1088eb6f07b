"""How far each faster precision moves the mask from float32 with the official numerics.

For each precision (``--dtype`` spelling: bf16, fp16, mixed) against fp32 (which loads
with the official numerics): the fraction of confident pixels (|fp32 logit| > 0.05) whose
class (logit > 0) flips, the largest |logit| difference, and seconds per window on this
machine.

    python3 bench/precision.py tiny [--threads 2]
    python3 bench/precision.py full [--release DIR] [--work DIR] [--precisions fp32 bf16 fp16 mixed]
                                    [--scenes FILE ...] [--threads 2]

``tiny``: the conformance fixture's tiny model and its one sample (seconds).
``full``: a full-size synthetic release (random weights; ``bench/model_cpu.py`` writes it,
or ``--release`` names one) on one 1024 px whole-scene window of each sample scene and
five public scenes: the full-resolution RGB resized and padded by the official rule.
Random weights stand in for the released ones, so the logits are not those of a trained
model; the flips say how much rounding the network amplifies, not how often a real answer
changes. Each precision's logits are kept in ``--work`` window by window, so a run can be cut short
and resumed, precisions can be measured in separate runs (each holds one model in memory),
and each precision's row covers the windows it has finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
REAL_SCENES = SHARED / "real_scenes"
# Natural-colour public scenes of different sensors and sizes (Landsat, NAIP, drone, WorldView, aerial COG).
DEFAULT_REAL = (
    "rasterio__RGB.byte.tif",
    "georust-gdal__m_3607824_se_17_1_20160620_sub.tif",
    "rio-tiler__pix4d_alpha_nodata.tif",
    "solaris__rgb_unmasked.tif",
    "rasterio__cogeo.tif",
)
PRECISIONS = ("fp32", "bf16", "fp16", "mixed")
REFERENCE = "fp32"
CONFIDENT = 0.05
QUESTION = "Which areas could be used to build new houses?"


def agreement(reference: np.ndarray, logits: np.ndarray) -> tuple[int, int, float]:
    """(flipped confident pixels, confident pixels, max |logit difference|)."""
    confident = np.abs(reference) > CONFIDENT
    flipped = (reference > 0) != (logits > 0)
    return int((flipped & confident).sum()), int(confident.sum()), float(np.abs(logits - reference).max())


def print_table(rows: list[tuple[str, int, int, float, float]], windows: int) -> None:
    print(f"{'precision':<10} {'confident px flipped':>26} {'max |dlogit|':>13} {'s/window':>9}")
    for name, flipped, confident, max_diff, seconds in rows:
        rate = "reference" if name == REFERENCE else f"{flipped}/{confident} = {100 * flipped / confident:.4f}%"
        print(f"{name:<10} {rate:>26} {max_diff:>13.4f} {seconds:>9.2f}")
    print(f"({windows} window(s); confident: |fp32 logit| > {CONFIDENT}; s/window: median, first window left out when there are more)")


# ---------------------------------------------------------------------------------------
# Tiny: the conformance fixture
# ---------------------------------------------------------------------------------------


def fixture_logits(model, inputs) -> np.ndarray:
    """Mask logits (S, S) of the fixture's sample, from its own token ids."""
    import torch

    from segearth_model.prompt import PromptTokens

    ids = inputs["input_ids"][0].tolist()
    image_at, refer_at = ids.index(-200), ids.index(-204)
    prompt = PromptTokens(head_ids=tuple(ids[:image_at]), tail_ids=tuple(ids[image_at + 1 : refer_at]))
    question = inputs["token_refer_id"][0].tolist()
    with torch.inference_mode():
        features = model.encode_windows(inputs["images"].to(model.dtype))
        return model.mask_logits(features, [question], prompt)[0, 0].float().numpy()


def run_tiny(threads: int) -> None:
    import torch
    from safetensors.torch import load_file

    from segearth_model import load_pretrained

    torch.set_num_threads(threads)
    if not CONFORMANCE.is_dir():
        raise SystemExit(f"{CONFORMANCE}: conformance fixture not found")
    sys.path.insert(0, str(REPO / "tests"))
    from conformance import write_fixture_checkpoint
    inputs = load_file(str(CONFORMANCE / "tiny_inputs.safetensors"))
    official = load_file(str(CONFORMANCE / "tiny_outputs.safetensors"))["final.mask_logits_upsampled"][0].numpy()
    rows = []
    with tempfile.TemporaryDirectory(prefix="segearth-precision-") as temporary:
        checkpoint = write_fixture_checkpoint(Path(temporary))
        reference = None
        for name in PRECISIONS:
            model, _ = load_pretrained(checkpoint, device="cpu", dtype=name)
            fixture_logits(model, inputs)  # warm-up: first-call allocations are not the precision's cost
            begin = time.perf_counter()
            logits = fixture_logits(model, inputs)
            seconds = time.perf_counter() - begin
            if reference is None:
                reference = logits
                print(f"fp32 (official numerics) against the fixture's official logits: max |dlogit| "
                      f"{np.abs(logits - official).max():.2e}, flipped confident pixels {agreement(official, logits)[0]}")
            rows.append((name, *agreement(reference, logits), seconds))
    print(f"tiny conformance model, {reference.shape[0]} px window, 1 question, {threads} threads:")
    print_table(rows, 1)


# ---------------------------------------------------------------------------------------
# Full size: a synthetic release on real scenes
# ---------------------------------------------------------------------------------------


def whole_scene_window(path: Path) -> np.ndarray:
    """(3, 1024, 1024) uint8: the scene's full-resolution RGB through the official resize and pad."""
    from segearth_cli.scene import open_scene
    from segearth_cli.windows import Window
    from segearth_model.preprocess import resize_and_pad

    with open_scene(path) as reader:
        width, height = reader.scene.width, reader.scene.height
        native = Window(0, 0, width, height, 1.0, max(width, height), 0, 0, width, height)
        canvas, _ = reader.read(native)
    rgb = np.ascontiguousarray(canvas[:, :height, :width].transpose(1, 2, 0))
    padded, _ = resize_and_pad(rgb, 1024)
    return np.ascontiguousarray(padded.transpose(2, 0, 1))


def default_scenes() -> list[Path]:
    scenes = sorted((REPO / "sample_scenes").glob("*.tif"))
    scenes += [REAL_SCENES / name for name in DEFAULT_REAL if (REAL_SCENES / name).is_file()]
    return scenes


def measure_full(release: Path, name: str, scenes: list[Path], work: Path, threads: int) -> None:
    """Logits of each scene at precision ``name`` into ``work/name/``, saved window by window.

    A run cut short keeps the windows it finished; a rerun skips them.
    """
    import os

    import torch

    from segearth_model import load_pretrained
    from segearth_model.predictor import MaskPredictor

    torch.set_num_threads(threads)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    timings_file = folder / "seconds.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    todo = [path for path in scenes if not (folder / f"{path.name}.npy").is_file()]
    if not todo:
        return
    load_before = os.getloadavg()[0]
    model, tokenizer = load_pretrained(release, device="cpu", dtype=name)
    predictor = MaskPredictor(model, tokenizer)
    for path in todo:
        window = torch.from_numpy(whole_scene_window(path))[None]
        begin = time.perf_counter()
        logits = predictor.predict(window, [QUESTION])[0, 0].numpy()
        seconds = time.perf_counter() - begin
        np.save(folder / f"{path.name}.npy", logits)
        # The first window of a process also computes the shared prompt head.
        timings[path.name] = {"seconds": seconds, "first_in_process": path == todo[0], "threads": threads,
                              "load_average": [load_before, os.getloadavg()[0]]}
        timings_file.write_text(json.dumps(timings, indent=1))
        print(f"  {name} {path.name}: {seconds:.1f} s (1-minute load average {os.getloadavg()[0]:.1f})", flush=True)


def report_full(work: Path, scenes: list[Path]) -> None:
    """One row per precision, over the windows it and the reference have finished."""
    measured = [name for name in PRECISIONS if (work / name / "seconds.json").is_file()]
    if REFERENCE not in measured:
        print(f"no {REFERENCE} logits in {work} yet")
        return
    reference_done = json.loads((work / REFERENCE / "seconds.json").read_text())
    rows, per_scene = [], []
    for name in measured:
        timings = json.loads((work / name / "seconds.json").read_text())
        done = [path for path in scenes if path.name in timings and path.name in reference_done]
        if not done:
            continue
        flipped = confident = 0
        max_diff = 0.0
        for path in done:
            reference = np.load(work / REFERENCE / f"{path.name}.npy")
            f, c, d = agreement(reference, np.load(work / name / f"{path.name}.npy"))
            flipped, confident, max_diff = flipped + f, confident + c, max(max_diff, d)
            per_scene.append((name, path.name, f, c, d))
        later = [timings[p.name]["seconds"] for p in done if not timings[p.name]["first_in_process"]]
        seconds = statistics.median(later or [timings[p.name]["seconds"] for p in done])
        loads = [x for p in done for x in timings[p.name]["load_average"]]
        rows.append((name, flipped, confident, max_diff, seconds, len(done), max(loads, default=float("nan"))))
    print("per scene:")
    for name, scene, f, c, d in per_scene:
        if name != REFERENCE:
            print(f"  {name:<6} {scene:<52} {f:>6}/{c:<8} flipped  max |dlogit| {d:.4f}")
    print("full-size synthetic release (random weights: logits unlike a trained model's), 1 question per window:")
    print(f"{'precision':<10} {'windows':>7} {'confident px flipped':>28} {'max |dlogit|':>13} {'s/window':>9} {'load avg':>9}")
    for name, flipped, confident, max_diff, seconds, windows, load in rows:
        rate = "reference" if name == REFERENCE else f"{flipped}/{confident} = {100 * flipped / confident:.4f}%"
        print(f"{name:<10} {windows:>7} {rate:>28} {max_diff:>13.4f} {seconds:>9.1f} {load:>9.1f}")
    print(f"(confident: |fp32 logit| > {CONFIDENT}; s/window: median, leaving out each process's first window "
          "when there are others; load avg: the highest 1-minute load average seen, other processes share the cores)")


def run_full(args) -> None:
    scenes = [Path(s) for s in args.scenes] if args.scenes else default_scenes()
    if not scenes:
        raise SystemExit("no scenes to measure")
    work = args.work or Path(tempfile.mkdtemp(prefix="segearth-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    release = args.release
    if release is None:
        release = work / "release"
        if not (release / "model.safetensors").is_file():
            release.mkdir(exist_ok=True)
            subprocess.run([sys.executable, str(REPO / "bench" / "model_cpu.py"), "--write-only", str(release)], check=True)
    print(f"release {release}; work {work}; scenes: {', '.join(s.name for s in scenes)}")
    for name in args.precisions:
        # One process per precision: each holds one model, and its memory goes back afterwards.
        command = [sys.executable, __file__, "measure", name, "--release", str(release), "--work", str(work),
                   "--threads", str(args.threads), "--scenes", *map(str, scenes)]
        subprocess.run(command, check=True)
    report_full(work, scenes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("tiny", help="the conformance fixture's tiny model")
    tiny.add_argument("--threads", type=int, default=2)
    full = commands.add_parser("full", help="a full-size synthetic release on real scenes")
    full.add_argument("--release", type=Path, help="a release directory (default: write a synthetic one into --work)")
    full.add_argument("--work", type=Path, help="where logits and timings are kept between runs (default: a new temporary folder)")
    full.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    full.add_argument("--scenes", nargs="+", help="scene files (default: sample_scenes/*.tif and five public scenes)")
    full.add_argument("--threads", type=int, default=2)
    measure = commands.add_parser("measure")  # one precision in its own process; used by `full`
    measure.add_argument("precision", choices=PRECISIONS)
    measure.add_argument("--release", type=Path, required=True)
    measure.add_argument("--work", type=Path, required=True)
    measure.add_argument("--scenes", nargs="+", required=True)
    measure.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "tiny":
        run_tiny(args.threads)
    elif args.command == "full":
        run_full(args)
    else:
        measure_full(args.release, args.precision, [Path(s) for s in args.scenes], args.work, args.threads)


if __name__ == "__main__":
    main()
