"""The on-disk cache of the shared prompt head: hits, misses, damaged files, same answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segearth_model.predictor import MaskPredictor
from segearth_model.prompt_cache import PromptHeadCache, default_cache_dir
from segearth_model.tiny_random import build_tiny_random

QUESTIONS = ["where are the roofs?", "which field is flooded?"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


@pytest.fixture(scope="module")
def images(tiny):
    size = tiny[0].config.image_size
    return torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


@pytest.fixture(scope="module")
def uncached_logits(tiny, images):
    model, tokenizer = tiny
    return MaskPredictor(model, tokenizer).predict(images, QUESTIONS)


class CountingModel:
    """Counts the prompt-head computations of a model, delegating everything else."""

    def __init__(self, model, monkeypatch):
        self.computed = 0
        original = model.encode_prompt_head

        def counted(prompt):
            self.computed += 1
            return original(prompt)

        monkeypatch.setattr(model, "encode_prompt_head", counted)


def predictor(tiny, cache: PromptHeadCache) -> MaskPredictor:
    model, tokenizer = tiny
    return MaskPredictor(model, tokenizer, head_cache=cache)


def stored_files(directory: Path) -> list[Path]:
    return sorted((directory / "prompt-heads").glob("*.safetensors"))


def test_second_run_reads_the_head_and_answers_the_same(tiny, images, uncached_logits, tmp_path, monkeypatch):
    counter = CountingModel(tiny[0], monkeypatch)
    cache = PromptHeadCache(tmp_path, tiny[0].weights_fingerprint)
    first = predictor(tiny, cache).predict(images, QUESTIONS)
    assert counter.computed == 1 and len(stored_files(tmp_path)) == 1
    second = predictor(tiny, cache).predict(images, QUESTIONS)
    assert counter.computed == 1  # read back, not recomputed
    assert torch.equal(first, uncached_logits) and torch.equal(second, uncached_logits)
    pairs = predictor(tiny, cache).predict_pairs(images, QUESTIONS)
    assert torch.equal(pairs, MaskPredictor(*tiny).predict_pairs(images, QUESTIONS))


def test_a_changed_key_misses(tiny, images, tmp_path, monkeypatch):
    model = tiny[0]
    cache = PromptHeadCache(tmp_path, model.weights_fingerprint)
    head_ids = predictor(tiny, cache).prompt.head_ids
    predictor(tiny, cache).predict(images, QUESTIONS[:1])
    assert cache.load(cache.describe(head_ids, model.device, model.dtype, False), model.device) is not None
    retrained = PromptHeadCache(tmp_path, model.weights_fingerprint + "-retrained")
    changed = [
        (retrained, retrained.describe(head_ids, model.device, model.dtype, False)),
        (cache, cache.describe(head_ids, model.device, torch.bfloat16, False)),
        (cache, cache.describe(head_ids, model.device, model.dtype, True)),
        (cache, cache.describe(head_ids[:-1], model.device, model.dtype, False)),
    ]
    for reader, key in changed:
        assert reader.load(key, model.device) is None
    counter = CountingModel(model, monkeypatch)
    predictor(tiny, retrained).predict(images, QUESTIONS[:1])
    assert counter.computed == 1 and len(stored_files(tmp_path)) == 2


def test_a_corrupt_file_is_ignored_and_rewritten(tiny, images, uncached_logits, tmp_path, monkeypatch):
    counter = CountingModel(tiny[0], monkeypatch)
    cache = PromptHeadCache(tmp_path, tiny[0].weights_fingerprint)
    predictor(tiny, cache).predict(images, QUESTIONS)
    (stored,) = stored_files(tmp_path)
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    assert torch.equal(predictor(tiny, cache).predict(images, QUESTIONS), uncached_logits)
    assert counter.computed == 2
    stored.write_bytes(b"\x00garbage")
    assert torch.equal(predictor(tiny, cache).predict(images, QUESTIONS), uncached_logits)
    assert counter.computed == 3
    # Rewritten whole: the next run reads it.
    predictor(tiny, cache).predict(images, QUESTIONS)
    assert counter.computed == 3


def test_a_file_recording_another_key_is_not_trusted(tiny, images, uncached_logits, tmp_path, monkeypatch):
    model = tiny[0]
    counter = CountingModel(model, monkeypatch)
    cache = PromptHeadCache(tmp_path, model.weights_fingerprint)
    predictor(tiny, cache).predict(images, QUESTIONS)
    other = PromptHeadCache(tmp_path, "someone-else")
    head_ids = predictor(tiny, cache).prompt.head_ids
    # Another model's head, planted under this model's file name.
    other_key = other.describe(head_ids, model.device, model.dtype, False)
    other.store(other_key, model.encode_prompt_head(predictor(tiny, cache).prompt))
    own = cache.describe(head_ids, model.device, model.dtype, False)
    other.path_for(other_key).replace(cache.path_for(own))
    computed = counter.computed
    assert torch.equal(predictor(tiny, cache).predict(images, QUESTIONS), uncached_logits)
    assert counter.computed == computed + 1


def test_an_unwritable_cache_costs_time_not_the_answer(tiny, images, uncached_logits, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    cache = PromptHeadCache(blocker, tiny[0].weights_fingerprint)
    assert torch.equal(predictor(tiny, cache).predict(images, QUESTIONS), uncached_logits)
    assert blocker.read_text() == "a file where the cache folder would be"


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGEARTH_CACHE_DIR", str(tmp_path / "heads"))
    assert default_cache_dir() == tmp_path / "heads"
    monkeypatch.setenv("SEGEARTH_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.delenv("SEGEARTH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "segearth"
