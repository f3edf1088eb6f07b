"""The conversation the model was trained on, and how it is turned into token ids.

SegEarth-R1 reads a ``llava_phi`` conversation (LLaMA-2 style ``[INST]`` markup around a
system message). The image is spliced in where ``<image>`` stands and the question where
``<refer>`` stands. Everything before the question is therefore the same for every
question asked about one window, and everything before the image is the same for every
window; the model caches both. Attention is causal and the mask is read from the question
span, so nothing after the question's ``[SEG]`` token can change a mask: the sequence
stops there.

The tokenization follows the training code exactly: the text on either side of a
placeholder is encoded on its own, without special tokens, and the question is encoded
with a leading space and followed by the ``[SEG]`` token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

SYSTEM_MESSAGE = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

IMAGE_PLACEHOLDER = "<image>"
QUESTION_PLACEHOLDER = "<refer>"
SEG_TOKEN = "[SEG]"
PAD_TOKEN = "[PAD]"

# The instruction that precedes the question, per training task. EarthReason questions
# were trained with the first, RRSIS-D and RefSegRS referring expressions with the second.
TASK_INSTRUCTIONS = {
    "reasoning": "Please doing Reasoning Segmentation according to the following instruction:",
    "referring": "Please doing Referring Segmentation according to the following instruction:",
}
TASKS = tuple(TASK_INSTRUCTIONS)


class PromptError(ValueError):
    """A task, question or tokenizer the prompt cannot be built from."""


def check_task(task: str) -> str:
    if task not in TASK_INSTRUCTIONS:
        raise PromptError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def user_message(task: str) -> str:
    return f"This is an image {IMAGE_PLACEHOLDER}, {TASK_INSTRUCTIONS[check_task(task)]}\n{QUESTION_PLACEHOLDER}"


def prompt_prefix_text(task: str) -> str:
    """The conversation up to and including the question placeholder.

    The training conversation continues with `` [/INST]`` and the answer turn; none of
    that can reach the question span through causal attention, so it is never built.
    """
    return f"[INST] <<SYS>>\n{SYSTEM_MESSAGE}\n<</SYS>>\n\n{user_message(task)}"


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of the prompt around the image, without the question.

    ``head_ids`` precede the image tokens and are shared by every window; ``tail_ids``
    follow the image and precede the question.
    """

    head_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.head_ids:
            raise PromptError("the prompt head before the image is empty")


@dataclass(frozen=True)
class SpecialTokenIds:
    pad: int
    seg: int


def special_token_ids(tokenizer: Any) -> SpecialTokenIds:
    """The ``[PAD]`` and ``[SEG]`` ids a checkpoint's tokenizer added on top of phi-1.5's vocabulary."""
    ids = {}
    for token in (PAD_TOKEN, SEG_TOKEN):
        token_id = tokenizer.convert_tokens_to_ids(token)
        # Unknown tokens come back as the unk id rather than an error.
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise PromptError(f"tokenizer has no {token} token; it is not a SegEarth-R1 tokenizer")
        ids[token] = int(token_id)
    return SpecialTokenIds(pad=ids[PAD_TOKEN], seg=ids[SEG_TOKEN])


def _encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in tokenizer.encode(text, add_special_tokens=False))


def tokenize_prompt(tokenizer: Any, task: str = "reasoning") -> PromptTokens:
    """Encode the text on each side of ``<image>`` separately, as the training code did."""
    text = prompt_prefix_text(task)
    head, rest = text.split(IMAGE_PLACEHOLDER)
    tail = rest.removesuffix(QUESTION_PLACEHOLDER)
    return PromptTokens(head_ids=_encode(tokenizer, head), tail_ids=_encode(tokenizer, tail))


def _encode_as_text(tokenizer: Any, text: str) -> tuple[int, ...]:
    """``text`` encoded as plain text: a user who types ``[SEG]`` or ``<|endoftext|>`` gets
    the tokens of those characters, never the control tokens themselves.

    A fast tokenizer's added tokens are matched before its model sees the text, so the
    text goes through the normaliser, pre-tokeniser and model directly; for ordinary text
    the ids are the same as ``encode``'s.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tuple(int(i) for i in tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
    return tuple(int(token.id) for piece, _ in pieces for token in backend.model.tokenize(piece))


def tokenize_question(tokenizer: Any, question: str, seg_token_id: int | None = None) -> tuple[int, ...]:
    """``" " + question`` followed by ``[SEG]``: the span whose hidden states are mean-pooled."""
    if not isinstance(question, str) or not question.strip():
        raise PromptError("empty question")
    if seg_token_id is None:
        seg_token_id = special_token_ids(tokenizer).seg
    return _encode_as_text(tokenizer, " " + question) + (int(seg_token_id),)


def question_room(config: Any, prompt: PromptTokens) -> int:
    """Most tokens a question may have (``[SEG]`` included): the language model's context
    less the prompt head, the image's visual tokens and the prompt tail read before it."""
    used = len(prompt.head_ids) + config.projector.num_visual_tokens + len(prompt.tail_ids)
    return config.language.max_position_embeddings - used


def tokenize_questions(
    tokenizer: Any, questions: Sequence[str], seg_token_id: int | None = None
) -> list[tuple[int, ...]]:
    if isinstance(questions, str):
        raise PromptError("questions must be a sequence of strings, not one string")
    if len(questions) == 0:
        raise PromptError("no question given")
    if seg_token_id is None:
        seg_token_id = special_token_ids(tokenizer).seg
    return [tokenize_question(tokenizer, q, seg_token_id) for q in questions]
