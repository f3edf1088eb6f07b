"""SegEarth-R1 assembled: image + question -> mask logits.

Data flow for B windows and M questions:

1. ``encode_windows``: Swin (once per window) -> res2..res5; res5 -> visual tokens
   (projector) and local tokens (``local_project``); res2..res5 -> pixel decoder.
   The released code runs Swin twice on the same image; once is enough.
2. ``encode_prompt_head``: the prompt text before the image, the same for every window.
3. ``mask_logits``: visual tokens + prompt text up to the question, once per window, in
   the same pass as the first question; every other (window, question) pair continues
   that prefix with ``" " + question + [SEG]``. Each span is mean-pooled and projected to
   one decoder query. ``pair_mask_logits`` asks one question per window, each in its
   window's prefix pass.
4. ``decode_masks``: the mask decoder refines each query against its window's features;
   its S/4 output is upsampled bilinearly to S.

Attribute names follow the released checkpoint, so ``state_dict()`` keys are the released
keys (with the fused Phi QKV split into ``q_proj/k_proj/v_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import SegEarthR1Config
from .description import DescriptionPerceiver, description_query, mean_over_spans
from .language import PrefixState, SegEarthPhiModel
from .mask_decoder import MaskDecoder
from .pixel_decoder import MSDeformAttnPixelDecoder
from .projector import CompressionProjector
from .prompt import PromptError, PromptTokens
from .swin import SwinEncoder


@dataclass(frozen=True)
class WindowFeatures:
    """Everything the questions of a batch of windows need from the images.

    ``visual_tokens`` (B, T, hidden): the LLM's image tokens. ``local_tokens`` (B, N, d):
    the last Swin stage after ``local_project``, attended by the description perceiver.
    ``mask_features`` (B, C, S/4, S/4) and ``multi_scale_features`` (three maps, lowest
    resolution first) feed the mask decoder.
    """

    visual_tokens: torch.Tensor
    local_tokens: torch.Tensor
    mask_features: torch.Tensor
    multi_scale_features: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return int(self.visual_tokens.shape[0])


class SegEarthR1(nn.Module):
    def __init__(self, config: SegEarthR1Config):
        super().__init__()
        self.config = config
        lang = config.language
        desc = config.description
        if config.local_feature_dim != config.projector.in_channels:
            raise ValueError(
                f"projector input {config.projector.in_channels} must equal the last Swin stage's "
                f"{config.local_feature_dim} channels"
            )
        if config.projector.out_channels != lang.hidden_size:
            raise ValueError(
                f"projector output {config.projector.out_channels} must equal the LLM width {lang.hidden_size}"
            )
        vision_tower = SwinEncoder(config.swin)
        self.model = SegEarthPhiModel(lang, vision_tower, CompressionProjector(config.projector))
        # Only the mask path is served; the LM head and the learned seg queries are kept so
        # that released checkpoints load strictly.
        self.lm_head = nn.Linear(lang.hidden_size, lang.vocab_size, bias=False)
        self.seg_query = nn.Parameter(torch.zeros(config.mask_decoder.num_object_queries, lang.hidden_size))
        self.text_projector = nn.Linear(lang.hidden_size, desc.additional_dim)
        self.origin_SEG_token_projector = nn.Linear(lang.hidden_size, desc.additional_dim)
        self.local_project = nn.Linear(config.local_feature_dim, desc.additional_dim)
        self.d_layers = DescriptionPerceiver(desc)
        self.SEG_token_projector = nn.Linear(2 * desc.additional_dim, config.mask_decoder.hidden_dim)
        self.pixel_decoder = MSDeformAttnPixelDecoder(config.pixel_decoder, config.swin.stage_channels)
        self.predictor = MaskDecoder(config.mask_decoder, config.pixel_decoder.mask_dim)
        self.name_or_path = "segearth-r1"
        # Names the weights for caches of derived values (the prompt head); None: do not cache.
        self.weights_fingerprint: str | None = None
        # True only for tiny-random, whose answers mean nothing.
        self.is_placeholder = False

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def official_numerics(self) -> bool:
        """Round the rotary tables through float16, as the official loader did (see language.py)."""
        return self.model.official_numerics

    @official_numerics.setter
    def official_numerics(self, enabled: bool) -> None:
        self.model.official_numerics = enabled

    # ------------------------------------------------------------------ image side

    def encode_windows(self, pixel_values: torch.Tensor) -> WindowFeatures:
        """Normalised images (B, 3, S, S) -> :class:`WindowFeatures`; Swin runs once."""
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"expected normalised images of shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}")
        res2, res3, res4, res5 = self.model.vision_tower(pixel_values)
        visual_tokens = self.model.mm_projector(res5)
        local_tokens = self.local_project(res5.flatten(2).transpose(1, 2))
        mask_features, _, multi_scale = self.pixel_decoder((res2, res3, res4, res5))
        return WindowFeatures(
            visual_tokens=visual_tokens,
            local_tokens=local_tokens,
            mask_features=mask_features,
            multi_scale_features=tuple(multi_scale),
        )

    # ------------------------------------------------------------------ language side

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        return self.model.embed_tokens(torch.tensor([list(ids)], dtype=torch.long, device=self.device))

    def encode_prompt_head(self, prompt: PromptTokens) -> PrefixState:
        """Keys/values of the prompt text before the image (batch 1, shared by all windows)."""
        return self.model.run_after_prefix(self._embed(prompt.head_ids))[1]

    def _question_batch(
        self, question_ids: Sequence[Sequence[int]], prefix_length: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (M, L) and lengths (M,) of questions read after ``prefix_length`` tokens."""
        if len(question_ids) == 0:
            raise ValueError("no question given")
        lengths = [len(q) for q in question_ids]
        if min(lengths) == 0:
            raise ValueError("empty question token list")
        room = self.config.language.max_position_embeddings - prefix_length
        if max(lengths) > room:
            raise PromptError(f"a question is {max(lengths)} tokens long; at most {room} fit after the prompt")
        padded = torch.full((len(question_ids), max(lengths)), self.config.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(question_ids):
            padded[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        return padded.to(self.device), torch.tensor(lengths, device=self.device)

    def question_hidden_states(
        self, prefix: PrefixState, windows: torch.Tensor, question_ids: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states (N, L, hidden) of questions ``question_ids`` (N, L) read after
        the prefix of window ``windows[i]``."""
        return self.model.run_after_prefix(self.model.embed_tokens(question_ids), prefix, windows)[0]

    def question_queries(
        self,
        features: WindowFeatures,
        prefix: PrefixState,
        windows: torch.Tensor,
        question_ids: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Decoder queries (N, 1, hidden_dim) for the (window, question) pairs given row-wise."""
        hidden = self.question_hidden_states(prefix, windows, question_ids)
        return self._queries_from_hidden(features, windows, hidden, lengths)

    def _queries_from_hidden(
        self, features: WindowFeatures, windows: torch.Tensor, hidden: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        pooled = mean_over_spans(hidden, lengths)
        return description_query(
            pooled,
            features.local_tokens.index_select(0, windows),
            origin_projector=self.origin_SEG_token_projector,
            text_projector=self.text_projector,
            perceiver=self.d_layers,
            query_projector=self.SEG_token_projector,
        )

    # ------------------------------------------------------------------ masks

    def decode_masks(self, features: WindowFeatures, queries: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, M, S/4, S/4) of queries (B, M, hidden_dim), each independent of the others."""
        return self.predictor(list(features.multi_scale_features), features.mask_features, queries)

    def _prefix_length(self, prompt: PromptTokens, head: PrefixState, features: WindowFeatures) -> int:
        return head.length + features.visual_tokens.shape[1] + len(prompt.tail_ids)

    def _queries_with_prefix(
        self, features: WindowFeatures, prompt: PromptTokens, head: PrefixState, question_rows: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, PrefixState]:
        """Queries (B, 1, hidden_dim) of question row ``i`` (right-padded ids) asked of window
        ``i``, read in the same pass as the window's prefix; and the keys/values of that pass.

        On a CPU every pass reads all language-model weights, so running a question together
        with its window's prefix instead of after it halves the cost of a single question.
        """
        batch = features.batch_size
        width = question_rows.shape[1]
        tail = self._embed(prompt.tail_ids).expand(batch, -1, -1)
        questions = self.model.embed_tokens(question_rows)
        hidden, state = self.model.run_after_prefix(torch.cat([features.visual_tokens, tail, questions], dim=1), head)
        windows = torch.arange(batch, device=self.device)
        queries = self._queries_from_hidden(features, windows, hidden[:, -width:], lengths)
        return queries.view(batch, 1, -1), state

    def _upsampled_masks(self, features: WindowFeatures, queries: torch.Tensor) -> torch.Tensor:
        masks = self.decode_masks(features, queries)
        size = self.config.image_size
        return F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)

    def mask_logits(
        self,
        features: WindowFeatures,
        question_ids: Sequence[Sequence[int]],
        prompt: PromptTokens,
        *,
        head: PrefixState | None = None,
        max_rows: int | None = None,
    ) -> torch.Tensor:
        """Mask logits (B, M, S, S) for every window in ``features`` and every question.

        ``question_ids`` are the M tokenized questions (each ending with ``[SEG]``);
        ``head`` is a cached :meth:`encode_prompt_head` result. At most ``max_rows``
        (window, question) pairs go through the language model at once, which bounds the
        memory taken by the copied prefix keys/values.
        """
        batch = features.batch_size
        if head is None:
            head = self.encode_prompt_head(prompt)
        prefix_length = self._prefix_length(prompt, head, features)
        padded, lengths = self._question_batch(question_ids, prefix_length)
        count = padded.shape[0]
        # The first question rides along with every window's prefix; the keys/values of that
        # pass, cut back to the prefix, serve the other questions.
        first_length = int(lengths[0])
        first_queries, state = self._queries_with_prefix(
            features, prompt, head, padded[:1, :first_length].expand(batch, -1), lengths[:1].expand(batch)
        )
        if count == 1:
            return self._upsampled_masks(features, first_queries)
        prefix = state.truncated(prefix_length)
        others = count - 1
        windows = torch.arange(batch, device=self.device).repeat_interleave(others)
        questions = torch.arange(1, count, device=self.device).repeat(batch)
        step = max_rows or windows.numel()
        chunks = []
        for start in range(0, windows.numel(), step):
            w, q = windows[start : start + step], questions[start : start + step]
            # Trim padding that no row of this chunk needs.
            width = int(lengths[q].max())
            chunks.append(self.question_queries(features, prefix, w, padded[q, :width], lengths[q]))
        queries = torch.cat([first_queries, torch.cat(chunks).view(batch, others, -1)], dim=1)
        return self._upsampled_masks(features, queries)

    def pair_mask_logits(
        self,
        features: WindowFeatures,
        question_ids: Sequence[Sequence[int]],
        prompt: PromptTokens,
        *,
        head: PrefixState | None = None,
    ) -> torch.Tensor:
        """Mask logits (B, S, S) of question ``question_ids[i]`` asked of window ``i`` only: one
        language-model pass, each question riding along with its window's prefix."""
        if len(question_ids) != features.batch_size:
            raise ValueError(f"{len(question_ids)} questions for {features.batch_size} windows; pairs need one each")
        if head is None:
            head = self.encode_prompt_head(prompt)
        padded, lengths = self._question_batch(question_ids, self._prefix_length(prompt, head, features))
        queries, _ = self._queries_with_prefix(features, prompt, head, padded, lengths)
        return self._upsampled_masks(features, queries)[:, 0]

    def forward(
        self, pixel_values: torch.Tensor, question_ids: Sequence[Sequence[int]], prompt: PromptTokens
    ) -> torch.Tensor:
        return self.mask_logits(self.encode_windows(pixel_values), question_ids, prompt)
