"""The prompt and its tokenization reproduce the released model's input ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from segearth_model.prompt import (
    PromptError,
    prompt_prefix_text,
    special_token_ids,
    tokenize_prompt,
    tokenize_question,
    tokenize_questions,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CONFORMANCE = SHARED / "conformance"

# Placeholder ids of the released code: where the image and the question are spliced in.
IMAGE_ID = -200
REFER_ID = -204

FIXTURE_QUESTION = "Which part of this airport image could a small plane use for landing?"


@pytest.fixture(scope="module")
def tokenizer():
    path = CONFORMANCE / "phi15_tokenizer"
    if not path.is_dir():
        pytest.skip("../shared/conformance/phi15_tokenizer not present")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def fixture_inputs():
    path = CONFORMANCE / "tiny_inputs.safetensors"
    if not path.is_file():
        pytest.skip("../shared/conformance/tiny_inputs.safetensors not present")
    from safetensors.torch import load_file

    return load_file(str(path))


def test_special_token_ids_come_from_the_tokenizer(tokenizer):
    ids = special_token_ids(tokenizer)
    assert (ids.pad, ids.seg) == (50295, 50296)


def test_prompt_head_and_tail_match_the_released_input_ids(tokenizer, fixture_inputs):
    input_ids = fixture_inputs["full_vocab.input_ids"][0].tolist()
    image_at = input_ids.index(IMAGE_ID)
    refer_at = input_ids.index(REFER_ID)
    prompt = tokenize_prompt(tokenizer, "reasoning")
    assert list(prompt.head_ids) == input_ids[:image_at]
    assert list(prompt.tail_ids) == input_ids[image_at + 1 : refer_at]


def test_question_tokens_match_the_released_refer_ids(tokenizer, fixture_inputs):
    expected = fixture_inputs["full_vocab.token_refer_id"][0].tolist()
    assert list(tokenize_question(tokenizer, FIXTURE_QUESTION)) == expected
    assert [list(q) for q in tokenize_questions(tokenizer, [FIXTURE_QUESTION, FIXTURE_QUESTION])] == [expected] * 2


def test_question_ends_with_seg_and_starts_with_a_space_token(tokenizer):
    ids = tokenize_question(tokenizer, "roads")
    assert ids[-1] == special_token_ids(tokenizer).seg
    assert tokenizer.decode(list(ids[:-1])) == " roads"


def test_prompt_text_is_the_llava_phi_template():
    text = prompt_prefix_text("reasoning")
    assert text.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant.")
    assert text.endswith(
        "<</SYS>>\n\nThis is an image <image>, Please doing Reasoning Segmentation according to the following "
        "instruction:\n<refer>"
    )


def test_referring_task_differs_only_in_the_instruction(tokenizer):
    reasoning = tokenize_prompt(tokenizer, "reasoning")
    referring = tokenize_prompt(tokenizer, "referring")
    assert referring.head_ids == reasoning.head_ids
    assert referring.tail_ids != reasoning.tail_ids
    assert tokenizer.decode(list(referring.tail_ids)) == (
        ", Please doing Referring Segmentation according to the following instruction:\n"
    )


def test_bad_task_and_questions_are_rejected(tokenizer):
    with pytest.raises(PromptError, match="unknown task"):
        tokenize_prompt(tokenizer, "captioning")
    with pytest.raises(PromptError, match="empty question"):
        tokenize_question(tokenizer, "   ")
    with pytest.raises(PromptError, match="not one string"):
        tokenize_questions(tokenizer, "a single string")
    with pytest.raises(PromptError, match="no question"):
        tokenize_questions(tokenizer, [])


def test_tokenizer_without_seg_token_is_rejected():
    class PlainTokenizer:
        unk_token = "<unk>"
        unk_token_id = 0

        def convert_tokens_to_ids(self, token):
            return 0

    with pytest.raises(PromptError, match=r"no \[PAD\] token"):
        special_token_ids(PlainTokenizer())
