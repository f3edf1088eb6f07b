"""Precisions: what each ``--dtype`` spelling loads, and how far each moves the fixture's mask.

float32 is the official numerics (weights rounded through float16, rotary tables built in
float16) whichever spelling or command asks for it. The faster precisions are compared
with the official logits the conformance fixture recorded, on its confident pixels
(|logit| > 0.05). The bounds are about twice what ``python3 bench/precision.py tiny``
measured on a 2-core Xeon with torch 2.13 (bf16: 37 of 64,385 confident pixels flipped,
max |dlogit| 0.152; fp16: 0 and 0.014; mixed: 12 and 0.115); other CPUs round a little
differently, hence the margin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformance import conformance_file, write_fixture_checkpoint
from segearth_model import load_pretrained
from segearth_model.device import resolve_precision
from segearth_model.mixed_precision import FLOAT32_HEADS
from segearth_model.prompt import PromptTokens

IMAGE_ID, REFER_ID = -200, -204
CONFIDENT = 0.05
# precision -> (largest fraction of confident pixels flipped, largest |logit difference|)
BOUNDS = {
    "bf16": (0.0012, 0.30),
    "fp16": (0.0002, 0.03),
    "mixed": (0.0004, 0.23),
}
PARITY_TOL = 1e-4  # the parity tests' tolerance for float32 with the official numerics


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def fixture_checkpoint(tmp_path_factory) -> Path:
    """The fixture's weights and released config.json as a checkpoint directory."""
    return write_fixture_checkpoint(tmp_path_factory.mktemp("fixture_checkpoint"))


@pytest.fixture(scope="module")
def sample():
    from safetensors.torch import load_file

    inputs = load_file(str(conformance_file("tiny_inputs.safetensors")))
    official = load_file(str(conformance_file("tiny_outputs.safetensors")))["final.mask_logits_upsampled"][0]
    ids = inputs["input_ids"][0].tolist()
    image_at, refer_at = ids.index(IMAGE_ID), ids.index(REFER_ID)
    prompt = PromptTokens(head_ids=tuple(ids[:image_at]), tail_ids=tuple(ids[image_at + 1 : refer_at]))
    return inputs["images"], prompt, inputs["token_refer_id"][0].tolist(), official


def _logits(model, sample) -> torch.Tensor:
    images, prompt, question, _ = sample
    with torch.inference_mode():
        features = model.encode_windows(images.to(model.dtype))
        return model.mask_logits(features, [question], prompt)[0, 0].float()


# --- what the spellings load ----------------------------------------------------------------


def test_float32_loads_the_official_numerics():
    model, _ = load_pretrained("tiny-random", device="cpu", dtype="fp32")
    assert model.dtype == torch.float32
    assert model.official_numerics
    weight = model.state_dict()["model.layers.0.mlp.fc1.weight"]
    assert torch.equal(weight, weight.half().float())


@pytest.mark.parametrize("spelling, dtype", [("bf16", torch.bfloat16), ("float16", torch.float16)])
def test_faster_precisions_load_their_dtype_without_the_float16_rounding(spelling, dtype):
    model, _ = load_pretrained("tiny-random", device="cpu", dtype=spelling)
    assert model.dtype == dtype
    assert not model.official_numerics
    assert all(p.dtype == dtype for p in model.parameters())


def test_mixed_keeps_the_mask_heads_in_float32():
    model, _ = load_pretrained("tiny-random", device="cpu", dtype="mixed")
    assert model.dtype == torch.bfloat16
    assert not model.official_numerics
    for name, child in model.named_children():
        expected = torch.float32 if name in FLOAT32_HEADS else torch.bfloat16
        assert all(p.dtype == expected for p in child.parameters()), name
    assert model.model.vision_tower.patch_embed.proj.weight.dtype == torch.bfloat16


def test_precision_names():
    cpu = torch.device("cpu")
    for spelling, name in [("fp32", "float32"), ("float32", "float32"), ("bf16", "bfloat16"), ("bfloat16", "bfloat16"),
                           ("fp16", "float16"), ("float16", "float16"), ("mixed", "mixed"), ("MIXED", "mixed"),
                           ("auto", "float32")]:
        assert resolve_precision(spelling, cpu) == name
    with pytest.raises(ValueError, match="mixed"):
        resolve_precision("int8", cpu)


def test_auto_is_float16_on_a_gpu_and_float32_on_a_cpu():
    # Constructing a device object needs no such device.
    assert resolve_precision("auto", torch.device("cuda")) == "float16"
    assert resolve_precision("auto", torch.device("mps")) == "float16"
    assert resolve_precision("AUTO", torch.device("cpu")) == "float32"


def test_every_command_loads_float32_with_the_official_numerics():
    from segearth_cli.commands.eval import load_eval_segmenter
    from segearth_cli.segmenter import load_segmenter

    # eval once gave the official numerics only to the spelling "float32".
    for segmenter in (load_segmenter("tiny-random", revision=None, device="cpu", dtype="float32", task="auto", quiet=True),
                      load_eval_segmenter("tiny-random", task="reasoning", revision=None, device="cpu", dtype="fp32",
                                          quiet=True)):
        model = segmenter.predictor.model
        assert model.dtype == torch.float32 and model.official_numerics


# --- how far each precision moves the fixture's mask ---------------------------------------


def test_float32_reproduces_the_official_logits(fixture_checkpoint, sample):
    model, _ = load_pretrained(fixture_checkpoint, device="cpu", dtype="float32")
    official = sample[3]
    logits = _logits(model, sample)
    assert (logits - official).abs().max().item() <= PARITY_TOL
    confident = official.abs() > CONFIDENT
    assert torch.equal((logits > 0)[confident], (official > 0)[confident])


@pytest.mark.parametrize("precision", sorted(BOUNDS))
def test_faster_precisions_stay_within_their_measured_bounds(fixture_checkpoint, sample, precision):
    model, _ = load_pretrained(fixture_checkpoint, device="cpu", dtype=precision)
    official = sample[3]
    logits = _logits(model, sample)
    confident = official.abs() > CONFIDENT
    flipped = ((logits > 0) != (official > 0))[confident].float().mean().item()
    max_flipped, max_diff = BOUNDS[precision]
    assert flipped <= max_flipped
    assert (logits - official).abs().max().item() <= max_diff
    # Not vacuous: the precision really computes differently from float32.
    assert (logits - official).abs().max().item() > 1e-3
