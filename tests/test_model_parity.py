"""The assembled network reproduces the released code's tensors on the tiny conformance model.

The fixture (../shared/conformance) holds a tiny SegEarth-R1 with the released
architecture, its weights in the released key layout, one EarthReason-style sample and
the tensors the released code computed for it. The released sequence continues after the
question with the answer turn; causal attention keeps that from reaching the
question span, so positions 0..89 (up to the question's [SEG]) are compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segearth_model.config import SegEarthR1Config
from segearth_model.description import mean_over_spans
from segearth_model.predictor import MaskPredictor
from segearth_model.prompt import PromptTokens
from segearth_model.segearth_r1 import SegEarthR1
from segearth_model.state_dict import convert_checkpoint_state_dict

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CONFORMANCE = SHARED / "conformance"

IMAGE_ID = -200
REFER_ID = -204
FIXTURE_QUESTION = "Which part of this airport image could a small plane use for landing?"
# The fixture's question span: positions 75..89 of the released LLM sequence.
QUESTION_START, QUESTION_END = 75, 90

LLM_TOL = 1e-4
EARLY_TOL = 1e-5


def _load(name: str) -> dict[str, torch.Tensor]:
    path = CONFORMANCE / name
    if not path.is_file():
        pytest.skip(f"../shared/conformance/{name} not present")
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def fixture_inputs():
    return _load("tiny_inputs.safetensors")


@pytest.fixture(scope="module")
def fixture_outputs():
    return _load("tiny_outputs.safetensors")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = SegEarthR1Config.tiny()
    network = SegEarthR1(config).eval().requires_grad_(False)
    state = convert_checkpoint_state_dict(_load("tiny_weights.safetensors"), config)
    network.load_state_dict(state, strict=True)
    return network


@pytest.fixture(scope="module")
def prompt(fixture_inputs) -> PromptTokens:
    ids = fixture_inputs["input_ids"][0].tolist()
    image_at, refer_at = ids.index(IMAGE_ID), ids.index(REFER_ID)
    return PromptTokens(head_ids=tuple(ids[:image_at]), tail_ids=tuple(ids[image_at + 1 : refer_at]))


@pytest.fixture(scope="module")
def question(fixture_inputs) -> list[int]:
    return fixture_inputs["token_refer_id"][0].tolist()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


def _run(model: SegEarthR1, images: torch.Tensor, prompt: PromptTokens, question: list[int], official: bool) -> dict:
    """Every intermediate the fixture records, computed through the model's public steps."""
    model.official_numerics = official
    with torch.inference_mode():
        features = model.encode_windows(images)
        head_embeds = model.model.embed_tokens(torch.tensor([prompt.head_ids]))
        window_embeds = torch.cat(
            [features.visual_tokens, model.model.embed_tokens(torch.tensor([prompt.tail_ids]))], dim=1
        )
        head_hidden, head = model.model.run_after_prefix(head_embeds)
        window_hidden, prefix = model.model.run_after_prefix(window_embeds, head)
        padded, lengths = model._question_batch([question])
        first = torch.zeros(1, dtype=torch.long)
        question_hidden = model.question_hidden_states(prefix, first, padded)
        pooled = mean_over_spans(question_hidden, lengths)
        text = model.text_projector(pooled[:, None])
        d_out = model.d_layers(text, features.local_tokens)
        query = model.question_queries(features, prefix, first, padded, lengths)
        logits = model.mask_logits(features, [question], prompt)
        low_res = model.decode_masks(features, query.view(1, 1, -1))
        question_embeds = model.model.embed_tokens(padded)
        origin = model.origin_SEG_token_projector(pooled[:, None])
    model.official_numerics = False
    return {
        "inputs_embeds": torch.cat([head_embeds, window_embeds, question_embeds], dim=1),
        "hidden": torch.cat([head_hidden, window_hidden, question_hidden], dim=1),
        "pooled": pooled,
        "origin": origin,
        "local": features.local_tokens,
        "text": text,
        "d_layers": d_out,
        "query": query,
        "pred_masks": low_res,
        "logits": logits,
    }


@pytest.fixture(scope="module")
def official_run(model, fixture_inputs, prompt, question):
    return _run(model, fixture_inputs["images"], prompt, question, official=True)


@pytest.fixture(scope="module")
def fp32_rope_run(model, fixture_inputs, prompt, question):
    return _run(model, fixture_inputs["images"], prompt, question, official=False)


def test_converted_release_weights_fill_every_parameter(model):
    config = model.config
    state = convert_checkpoint_state_dict(_load("tiny_weights.safetensors"), config)
    assert set(state) == set(model.state_dict())
    assert "model.layers.0.self_attn.q_proj.weight" in state
    assert "lm_head.bias" not in state


def test_llm_inputs_are_the_released_splice(official_run, fixture_outputs):
    expected = fixture_outputs["llm.inputs_embeds"][:, :QUESTION_END]
    assert _max_diff(official_run["inputs_embeds"], expected) <= EARLY_TOL


def test_last_hidden_state_matches_with_official_numerics(official_run, fixture_outputs):
    expected = fixture_outputs["llm.last_hidden_state"][:, :QUESTION_END]
    assert _max_diff(official_run["hidden"], expected) <= LLM_TOL


def test_description_projection_matches(official_run, fixture_outputs):
    out = fixture_outputs
    assert _max_diff(official_run["pooled"], out["seg.pooled_and_refer_states"][:1]) <= LLM_TOL
    assert _max_diff(official_run["origin"], out["seg.origin_SEG_token_projector_out"]) <= LLM_TOL
    assert _max_diff(official_run["local"], out["seg.local_project_out"]) <= EARLY_TOL
    # Only the pooled row (row 0) of the text projection reaches the mask.
    assert _max_diff(official_run["text"], out["seg.text_projector_out"][:, :1]) <= LLM_TOL
    assert _max_diff(official_run["d_layers"], out["seg.d_layers_out"]) <= LLM_TOL
    assert _max_diff(official_run["query"], out["seg.SEG_embedding"]) <= LLM_TOL


def test_masks_match(official_run, fixture_outputs):
    assert _max_diff(official_run["pred_masks"], fixture_outputs["predictor.pred_masks"]) <= LLM_TOL
    expected = fixture_outputs["final.mask_logits_upsampled"]
    logits = official_run["logits"][0]
    assert _max_diff(logits, expected) <= LLM_TOL
    confident = expected[0].abs() > 1e-3
    binary = (logits[0] > 0).to(torch.uint8)
    assert torch.equal(binary[confident], fixture_outputs["final.binary_mask"][confident])


def test_float32_rope_matches_the_alternative_tensors(fp32_rope_run, official_run, fixture_outputs):
    out = fixture_outputs
    hidden = out["alt_fp32rope.llm.last_hidden_state"][:, :QUESTION_END]
    assert _max_diff(fp32_rope_run["hidden"], hidden) <= LLM_TOL
    assert _max_diff(fp32_rope_run["query"], out["alt_fp32rope.seg.SEG_embedding"]) <= LLM_TOL
    assert _max_diff(fp32_rope_run["pred_masks"], out["alt_fp32rope.predictor.pred_masks"]) <= LLM_TOL
    binary = (fp32_rope_run["logits"][0, 0] > 0).to(torch.uint8)
    confident = out["final.mask_logits_upsampled"][0].abs() > 1e-3
    assert torch.equal(binary[confident], out["alt_fp32rope.final.binary_mask"][confident])
    # The switch really changes the numbers: the two runs differ as the fixture says they should.
    assert _max_diff(fp32_rope_run["hidden"], official_run["hidden"]) > 1e-5


class _TinyVocabularyTokenizer:
    """phi-1.5's tokenizer with ids folded into the tiny model's 1002-token vocabulary,
    the mapping the fixture's tiny ids were made with (id % 1000, [PAD] 1000, [SEG] 1001)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.unk_token = tokenizer.unk_token
        self.unk_token_id = tokenizer.unk_token_id % 1000

    def _fold(self, token_id: int) -> int:
        return {50295: 1000, 50296: 1001}.get(token_id, token_id % 1000)

    def encode(self, text: str, **options) -> list[int]:
        return [self._fold(i) for i in self.tokenizer.encode(text, **options)]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._fold(self.tokenizer.convert_tokens_to_ids(token))


def test_predictor_end_to_end_from_the_raw_window(model, fixture_inputs, fixture_outputs):
    path = CONFORMANCE / "phi15_tokenizer"
    if not path.is_dir():
        pytest.skip("../shared/conformance/phi15_tokenizer not present")
    from transformers import AutoTokenizer

    tokenizer = _TinyVocabularyTokenizer(AutoTokenizer.from_pretrained(str(path)))
    predictor = MaskPredictor(model, tokenizer, task="reasoning")
    assert predictor.input_size == 256
    assert predictor.prompt.head_ids == tuple(fixture_inputs["input_ids"][0, :56].tolist())
    window = fixture_inputs["preprocessed_image_chw_uint8"][None]
    assert _max_diff(predictor.normalize(window), fixture_inputs["images"]) <= 1e-6
    model.official_numerics = True
    try:
        logits = predictor.predict(window, [FIXTURE_QUESTION])
    finally:
        model.official_numerics = False
    assert logits.dtype == torch.float32 and logits.shape == (1, 1, 256, 256)
    assert _max_diff(logits[0], fixture_outputs["final.mask_logits_upsampled"]) <= LLM_TOL
