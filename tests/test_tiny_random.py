"""The built-in ``tiny-random`` model: offline, deterministic, small, and flagged as meaningless."""

from __future__ import annotations

import pytest
import torch

from segearth_model import PLACEHOLDER_NOTICE, load_pretrained
from segearth_model.config import SegEarthR1Config
from segearth_model.tiny_random import build_tiny_tokenizer


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained("tiny-random", device="cpu", dtype="fp32")


def test_tokenizer_has_the_tiny_vocabulary():
    tokenizer = build_tiny_tokenizer()
    assert len(tokenizer) == 1002
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 1000
    assert tokenizer.convert_tokens_to_ids("[SEG]") == 1001
    assert tokenizer.encode("[SEG]", add_special_tokens=False) == [1001]
    ids = tokenizer.encode(" Which part of this airport image could a small plane use for landing?", add_special_tokens=False)
    assert all(0 <= i < 1000 for i in ids)
    # Byte-level BPE: any text round-trips, including characters it never saw.
    text = " Où est le pont? 東京 ✈"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_tokenizer_is_deterministic():
    first, second = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    text = " Find every parking lot next to a warehouse."
    assert first.encode(text) == second.encode(text)


def test_model_is_the_tiny_architecture_and_flagged(tiny):
    model, tokenizer = tiny
    assert model.config == SegEarthR1Config.tiny()
    assert model.is_placeholder
    assert model.name_or_path == "tiny-random"
    assert model.placeholder_notice == PLACEHOLDER_NOTICE
    assert "tiny-random" in PLACEHOLDER_NOTICE and "meaningless" in PLACEHOLDER_NOTICE
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_weights_are_deterministic(tiny):
    model, _ = tiny
    again, _ = load_pretrained("tiny-random", device="cpu", dtype="fp32")
    first, second = model.state_dict(), again.state_dict()
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Seeded, not constant: LayerNorm weights scatter around one, linear weights around zero.
    norm = first["model.final_layernorm.weight"]
    assert 0.5 < float(norm.mean()) < 1.5 and float(norm.std()) > 0.01
    linear = first["model.layers.0.mlp.fc1.weight"]
    assert abs(float(linear.mean())) < 0.05 and float(linear.std()) > 0.01


def test_predicts_finite_logits_of_the_right_shape(tiny):
    from segearth_model.predictor import MaskPredictor

    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    images = torch.randint(0, 256, (2, 3, 256, 256), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    logits = predictor.predict(images, ["where is the runway?", "find the buildings", "any water?"])
    assert logits.shape == (2, 3, 256, 256)
    assert logits.dtype == torch.float32
    assert bool(torch.isfinite(logits).all())
    # Random weights still give an input-dependent answer.
    assert not torch.equal(logits[0], logits[1])
    again = predictor.predict(images, ["where is the runway?", "find the buildings", "any water?"])
    assert torch.equal(logits, again)


def test_bfloat16_variant():
    model, _ = load_pretrained("tiny-random", device="cpu", dtype="bf16")
    assert model.is_placeholder
    # The generated float32 weights as they are, without float32's official float16 rounding.
    unrounded, _ = load_pretrained("tiny-random", device="cpu", dtype="fp32", official_numerics=False)
    reference = unrounded.state_dict()["model.layers.0.mlp.fc1.weight"]
    assert torch.equal(model.state_dict()["model.layers.0.mlp.fc1.weight"], reference.to(torch.bfloat16))
