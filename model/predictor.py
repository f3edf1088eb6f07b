"""Windows + questions -> mask logits, with everything shareable computed once.

Per call: the image encoder, projector and pixel decoder run once per window; the prompt
text before the image runs once per predictor (it never changes), or is read from a
:class:`.prompt_cache.PromptHeadCache` that earlier runs filled; the prompt up to the
question runs once per window, in the same pass as the first question; the other questions
of all windows then run together. ``predict_pairs`` asks one question per window instead, all
windows in one pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .language import PrefixState
from .preprocess import normalize
from .prompt import PromptTokens, check_task, special_token_ids, tokenize_prompt, tokenize_questions
from .prompt_cache import PromptHeadCache
from .segearth_r1 import SegEarthR1


class MaskPredictor:
    """Runs a :class:`SegEarthR1` on RGB windows for a list of questions.

    ``task`` picks the instruction the questions are asked under: ``"reasoning"``
    (EarthReason-style questions) or ``"referring"`` (short referring expressions, as in
    RRSIS-D and RefSegRS). ``head_cache`` keeps the shared prompt head between runs.
    """

    def __init__(
        self,
        model: SegEarthR1,
        tokenizer: Any,
        task: str = "reasoning",
        *,
        name: str | None = None,
        max_rows: int = 16,
        head_cache: PromptHeadCache | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = check_task(task)
        self.name = name or model.name_or_path
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        # Bounds how many (window, question) pairs share one language/decoder batch, which
        # bounds the memory of the copied prompt keys/values.
        self.max_rows = max_rows
        ids = special_token_ids(tokenizer)
        config = model.config
        if (ids.pad, ids.seg) != (config.pad_token_id, config.seg_token_id):
            raise ValueError(
                f"tokenizer's [PAD]/[SEG] ids {ids.pad}/{ids.seg} do not match the model's "
                f"{config.pad_token_id}/{config.seg_token_id}"
            )
        self.prompt: PromptTokens = tokenize_prompt(tokenizer, self.task)
        self.head_cache = head_cache
        self._head: PrefixState | None = None
        self._head_key: tuple | None = None

    @property
    def input_size(self) -> int:
        return self.model.config.image_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _prompt_head(self) -> PrefixState:
        key = (self.device, self.dtype, self.model.official_numerics)
        if self._head is None or self._head_key != key:
            self._head = self._stored_or_computed_head()
            self._head_key = key
        return self._head

    def _stored_or_computed_head(self) -> PrefixState:
        if self.head_cache is None:
            return self.model.encode_prompt_head(self.prompt)
        described = self.head_cache.describe(self.prompt.head_ids, self.device, self.dtype, self.model.official_numerics)
        head = self.head_cache.load(described, self.device)
        if head is None or len(head.keys) != self.model.config.language.num_hidden_layers:
            head = self.model.encode_prompt_head(self.prompt)
            self.head_cache.store(described, head)
        return head

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 (B, 3, S, S) -> the model's normalised input in the model's dtype and device."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        size = self.input_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images must have shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        return normalize(images.to(self.device), self.model.config).to(self.dtype)

    def predict(self, images: torch.Tensor, questions: Sequence[str], *, on_device: bool = False) -> torch.Tensor:
        """Mask logits (B, M, S, S) for ``images`` (B, 3, S, S) RGB 0..255 and M questions.

        The result is a float32 CPU tensor whatever the model's device and dtype, ready for
        numpy; a logit above 0 is a foreground pixel. ``on_device``: left on the model's
        device, in float32, for post-processing there.
        """
        # The constructor checked that the tokenizer's [SEG] is the model's.
        question_ids = tokenize_questions(self.tokenizer, questions, self.model.config.seg_token_id)
        with torch.inference_mode():
            pixel_values = self.normalize(images)
            if pixel_values.shape[0] == 0:
                return torch.zeros((0, len(question_ids), self.input_size, self.input_size))
            features = self.model.encode_windows(pixel_values)
            logits = self.model.mask_logits(
                features, question_ids, self.prompt, head=self._prompt_head(), max_rows=self.max_rows
            )
        return logits.float() if on_device else logits.float().cpu()

    def predict_pairs(self, images: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """Mask logits (B, S, S): ``questions[i]`` asked of ``images[i]`` only, all in one pass.

        Same inputs and output conventions as :meth:`predict`, with exactly one question per image.
        """
        with torch.inference_mode():
            pixel_values = self.normalize(images)
            if len(questions) != pixel_values.shape[0]:
                raise ValueError(
                    f"{len(questions)} questions for {pixel_values.shape[0]} images; pairs need exactly one question per image"
                )
            if pixel_values.shape[0] == 0:
                return torch.zeros((0, self.input_size, self.input_size))
            question_ids = tokenize_questions(self.tokenizer, questions, self.model.config.seg_token_id)
            features = self.model.encode_windows(pixel_values)
            logits = self.model.pair_mask_logits(features, question_ids, self.prompt, head=self._prompt_head())
        return logits.float().cpu()
