"""Batching windows and questions and caching the prompt prefix do not change the masks.

The reference runs one window and one question at a time through the plain language
model (no cache, no padding, the whole prompt from position 0) and the same downstream
modules; the predictor must agree with it while running the image encoder once per
window and the shared prompt text once per predictor.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from segearth_model.description import description_query
from segearth_model.predictor import MaskPredictor
from segearth_model.prompt import PromptError, tokenize_question
from segearth_model.tiny_random import build_tiny_random

QUESTIONS = [
    "Where is the runway?",
    "roads",
    "Which buildings with large red roofs stand near the river bank in the north of the image?",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (2, 3, 256, 256), generator=generator, dtype=torch.uint8)
    images[1, :, :40] = 0  # a padded band, as at a scene edge
    return images


def reference_logits(predictor: MaskPredictor, window: torch.Tensor, questions: list[str]) -> list[torch.Tensor]:
    """One window alone; each question alone with the whole prompt through the uncached language model."""
    model = predictor.model
    with torch.inference_mode():
        features = model.encode_windows(predictor.normalize(window[None]))
    return [_reference_question(predictor, features, window.shape[-2:], question) for question in questions]


def _reference_question(predictor: MaskPredictor, features, size, question: str) -> torch.Tensor:
    model = predictor.model
    prompt = predictor.prompt
    ids = tokenize_question(predictor.tokenizer, question)
    embed = model.model.embed_tokens
    with torch.inference_mode():
        sequence = torch.cat(
            [
                embed(torch.tensor([prompt.head_ids])),
                features.visual_tokens,
                embed(torch.tensor([prompt.tail_ids])),
                embed(torch.tensor([ids])),
            ],
            dim=1,
        )
        hidden, _ = model.model.run_after_prefix(sequence)
        pooled = hidden[:, -len(ids) :].mean(dim=1)
        query = description_query(
            pooled,
            features.local_tokens,
            origin_projector=model.origin_SEG_token_projector,
            text_projector=model.text_projector,
            perceiver=model.d_layers,
            query_projector=model.SEG_token_projector,
        )
        masks = model.decode_masks(features, query.view(1, 1, -1))
        return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0, 0]


@pytest.mark.parametrize("official_numerics", [False, True])
def test_batched_cached_prediction_equals_one_at_a_time(tiny, windows, official_numerics):
    model, tokenizer = tiny
    model.official_numerics = official_numerics
    try:
        predictor = MaskPredictor(model, tokenizer)
        logits = predictor.predict(windows, QUESTIONS)
        assert logits.shape == (2, len(QUESTIONS), 256, 256)
        lengths = {len(tokenize_question(tokenizer, q)) for q in QUESTIONS}
        assert len(lengths) == len(QUESTIONS), "the questions must pad to different lengths"
        for b in range(windows.shape[0]):
            for m, expected in enumerate(reference_logits(predictor, windows[b], QUESTIONS)):
                assert (logits[b, m] - expected).abs().max().item() <= TOL, (b, m)
    finally:
        model.official_numerics = False


class CallCounter:
    def __init__(self, module: torch.nn.Module):
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        first = args[0] if args else None
        self.batches.append(int(first.shape[0]) if isinstance(first, torch.Tensor) else -1)

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("count", [1, 4])
def test_image_side_runs_once_per_window_whatever_the_number_of_questions(tiny, windows, count):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    counters = {
        "vision_tower": CallCounter(model.model.vision_tower),
        "mm_projector": CallCounter(model.model.mm_projector),
        "pixel_decoder": CallCounter(model.pixel_decoder),
    }
    try:
        questions = (QUESTIONS * 2)[:count]
        logits = predictor.predict(windows, questions)
    finally:
        for counter in counters.values():
            counter.close()
    assert logits.shape[:2] == (2, count)
    for name, counter in counters.items():
        assert len(counter.batches) == 1, name
    assert counters["vision_tower"].batches == [2]


def test_prompt_head_runs_once_per_predictor_and_questions_in_chunks(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer, max_rows=2)
    language = CallCounter(model.model.final_layernorm)  # once per language-model pass
    try:
        predictor.predict(windows[:1], QUESTIONS)
        first_call = list(language.batches)
        language.batches.clear()
        predictor.predict(windows[:1], QUESTIONS)
        second_call = list(language.batches)
    finally:
        language.close()
    # Language-model passes (embedding-level batch sizes are not visible to the hook, so
    # the number of passes is what is checked): head, window prefix with the first question,
    # the other 2 questions in one chunk of 2.
    assert len(first_call) == 1 + 1 + 1
    assert len(second_call) == 1 + 1


def test_chunk_size_does_not_change_the_result(tiny, windows):
    model, tokenizer = tiny
    whole = MaskPredictor(model, tokenizer).predict(windows, QUESTIONS)
    one_by_one = MaskPredictor(model, tokenizer, max_rows=1).predict(windows, QUESTIONS)
    assert (whole - one_by_one).abs().max().item() <= TOL


def test_question_order_only_permutes_the_output(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    forward = predictor.predict(windows[1:], QUESTIONS)
    backward = predictor.predict(windows[1:], QUESTIONS[::-1])
    assert (forward - backward.flip(1)).abs().max().item() <= TOL


def test_uint8_and_float_windows_agree_and_attributes(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer, task="referring")
    from_uint8 = predictor.predict(windows[:1], QUESTIONS[:1])
    from_float = predictor.predict(windows[:1].float(), QUESTIONS[:1])
    assert from_uint8.dtype == torch.float32 and from_uint8.device.type == "cpu"
    assert torch.equal(from_uint8, from_float)
    assert predictor.input_size == 256
    assert predictor.name == "tiny-random"
    assert predictor.device == torch.device("cpu")
    assert predictor.dtype == torch.float32


def test_reduced_precision_model_returns_float32_logits(windows):
    model, tokenizer = build_tiny_random(dtype=torch.bfloat16)
    predictor = MaskPredictor(model, tokenizer)
    assert predictor.dtype == torch.bfloat16
    logits = predictor.predict(windows[:1], QUESTIONS[:2])
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_bad_inputs_are_rejected(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        predictor.predict(windows[:, :, :128], QUESTIONS)
    with pytest.raises(PromptError, match="no question"):
        predictor.predict(windows, [])
    with pytest.raises(PromptError, match="unknown task"):
        MaskPredictor(model, tokenizer, task="captioning")


def test_tokenizer_of_another_vocabulary_is_rejected(tiny):
    model, _ = tiny

    class OtherTokenizer:
        unk_token = "<unk>"
        unk_token_id = 0

        def convert_tokens_to_ids(self, token):
            return {"[PAD]": 50295, "[SEG]": 50296}[token]

    with pytest.raises(ValueError, match="do not match"):
        MaskPredictor(model, OtherTokenizer())


def test_question_longer_than_the_position_table_is_rejected(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    with pytest.raises(PromptError, match="fit after the prompt"):
        predictor.predict(windows[:1], ["runway " * 2100])


def test_pairs_equal_each_window_asked_its_own_question_alone(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    three = torch.cat([windows, windows[:1].flip(-1)])
    # Questions of different token lengths, so the pairs pass pads some rows.
    logits = predictor.predict_pairs(three, QUESTIONS)
    assert logits.shape == (3, 256, 256) and logits.dtype == torch.float32
    for b, question in enumerate(QUESTIONS):
        alone = predictor.predict(three[b : b + 1], [question])[0, 0]
        assert (logits[b] - alone).abs().max().item() <= TOL, b
        (uncached,) = reference_logits(predictor, three[b], [question])
        assert (logits[b] - uncached).abs().max().item() <= TOL, b


def test_pairs_run_the_language_model_once_for_all_windows(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    predictor.predict_pairs(windows, QUESTIONS[:2])  # the prompt head is cached from here on
    language = CallCounter(model.model.final_layernorm)  # once per language-model pass
    vision = CallCounter(model.model.vision_tower)
    try:
        predictor.predict_pairs(windows, QUESTIONS[1:])
    finally:
        language.close()
        vision.close()
    assert len(language.batches) == 1
    assert vision.batches == [2]


def test_pairs_need_one_question_per_window(tiny, windows):
    model, tokenizer = tiny
    predictor = MaskPredictor(model, tokenizer)
    with pytest.raises(ValueError, match="3 questions for 2 images"):
        predictor.predict_pairs(windows, QUESTIONS)
    with pytest.raises(PromptError, match="fit after the prompt"):
        predictor.predict_pairs(windows[:1], ["runway " * 2100])
    assert predictor.predict_pairs(windows[:0], []).shape == (0, 256, 256)
