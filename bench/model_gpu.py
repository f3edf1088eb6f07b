"""GPU throughput of the full-size model with synthetic random weights (no network, no files).

Prints, per precision: windows/s at each batch size, extra questions/s, peak GPU memory,
the FLOPs of one window (counted by torch's FLOP counter; deformable-attention sampling is
not a matmul and is left out) and the fraction of the card's dense peak that achieves.

    python3 bench/model_gpu.py                      # on an H100: bf16 and fp32, batches 1, 4, 8
    python3 bench/model_gpu.py --device cpu --tiny  # smoke run of the same code on the tiny model
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from segearth_model.build import build_empty_model, materialize
from segearth_model.config import SegEarthR1Config
from segearth_model.device import resolve_dtype, resolve_precision
from segearth_model.mixed_precision import apply_mixed_precision
from segearth_model.precision import MIXED
from segearth_model.predictor import MaskPredictor
from segearth_model.tiny_random import build_tiny_tokenizer, random_state_dict

# Dense peaks of an H100 SXM, FLOP/s (an H200 has the same compute).
H100_PEAK = {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12}
# The official eval path per window, for comparison (Swin twice, answer span through Phi).
OFFICIAL_FLOP_PER_WINDOW = 2.254e12
REPO = Path(__file__).resolve().parents[1]
PHI15_TOKENIZER = REPO.parent / "shared" / "conformance" / "phi15_tokenizer"
QUESTIONS = [
    "Which part of this airport image could a small plane use for landing?",
    "Where are the buildings with the largest roofs?",
    "Which area of water could a ship use to reach the harbour?",
    "Find the road that connects the two bridges.",
    "Which fields are covered with crops?",
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokenizer_and_config(tiny: bool, tokenizer_dir: Path | None):
    if tiny:
        return build_tiny_tokenizer(), SegEarthR1Config.tiny()
    config = SegEarthR1Config()
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True), config
    # The tiny byte-level BPE stands in for phi-1.5's when its files are not at hand; its
    # [PAD]/[SEG] ids (1000/1001) lie inside the full vocabulary. Questions come out a few
    # tokens longer or shorter, which barely moves the figures.
    tokenizer = build_tiny_tokenizer()
    return tokenizer, SegEarthR1Config(pad_token_id=tokenizer.pad_token_id, seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"))


def build(config: SegEarthR1Config, device: torch.device, dtype: torch.dtype):
    model = build_empty_model(config)
    # Generated on the device in the target precision: no host copy of the weights.
    state = random_state_dict(model, device=device, dtype=dtype)
    # Handing the tensors over one by one lets the model adopt them without a second copy.
    return materialize(model, config, ((key, state.pop(key)) for key in list(state)), device=device, dtype=dtype)


def time_predict(predictor: MaskPredictor, images: torch.Tensor, questions: list[str], iterations: int) -> float:
    device = predictor.device
    predictor.predict(images, questions)  # warm-up: kernels, allocator, prompt head
    synchronize(device)
    begin = time.perf_counter()
    for _ in range(iterations):
        predictor.predict(images, questions)
    synchronize(device)
    return (time.perf_counter() - begin) / iterations


def flop_per_window(predictor: MaskPredictor, image: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    predictor.predict(image, QUESTIONS[:1])  # the prompt head is cached outside the count
    counter = FlopCounterMode(display=False)
    with counter:
        predictor.predict(image, QUESTIONS[:1])
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny architecture (smoke run)")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions in fp32 runs")
    parser.add_argument("--tokenizer-dir", type=Path, default=PHI15_TOKENIZER)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --device cpu --tiny for a smoke run")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    batches = [int(b) for b in args.batches.split(",")]
    tokenizer, config = tokenizer_and_config(args.tiny, args.tokenizer_dir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    is_h100 = "H100" in name or "H200" in name
    print(f"device: {name}; torch {torch.__version__}; model: {'tiny' if args.tiny else 'full-size'} random weights; "
          f"TF32 {'on' if args.tf32 else 'off'}")
    size = config.image_size
    generator = torch.Generator(device=device).manual_seed(0)

    for dtype_name in args.dtypes.split(","):
        precision = resolve_precision(dtype_name, device)
        dtype = resolve_dtype(precision, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model = build(config, device, dtype)
        if precision == MIXED:
            apply_mixed_precision(model)
            dtype = model.dtype
        predictor = MaskPredictor(model, tokenizer)
        peak_key = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "tf32" if args.tf32 else "fp32"}[dtype]
        peak = H100_PEAK[peak_key] if is_h100 else None
        image = torch.randint(0, 256, (1, 3, size, size), generator=generator, device=device, dtype=torch.uint8)
        flops = flop_per_window(predictor, image)
        print(f"\n[{dtype_name}] counted {flops / 1e12:.3f} TFLOP per window with one question "
              f"(official eval path: {OFFICIAL_FLOP_PER_WINDOW / 1e12:.3f})")
        for batch in batches:
            images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, device=device, dtype=torch.uint8)
            seconds = time_predict(predictor, images, QUESTIONS[:1], args.iterations)
            rate = batch / seconds
            utilisation = f"{rate * flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "n/a"
            print(f"  batch {batch:2d}: {rate:8.2f} windows/s  ({seconds * 1000:8.1f} ms per batch; peak FLOP/s used: {utilisation})")
        batch = batches[-1]
        images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, device=device, dtype=torch.uint8)
        one = time_predict(predictor, images, QUESTIONS[:1], args.iterations)
        five = time_predict(predictor, images, QUESTIONS, args.iterations)
        per_extra = (five - one) / (len(QUESTIONS) - 1)
        if per_extra > 0:
            print(f"  extra questions at batch {batch}: {batch / per_extra:.1f} questions/s "
                  f"({per_extra * 1000:.1f} ms per extra question per batch of {batch} windows)")
        else:
            print(f"  extra questions at batch {batch}: below timing noise ({one * 1000:.1f} ms with 1 question, "
                  f"{five * 1000:.1f} ms with {len(QUESTIONS)})")
        if device.type == "cuda":
            print(f"  peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        del predictor, model
        gc.collect()


if __name__ == "__main__":
    main()
