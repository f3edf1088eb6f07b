"""The language model computes exactly what transformers' eager ``PhiModel`` computes.

The network's Phi is written out in model/language.py; transformers' own implementation,
run here with the same weights, is the independent reference. Equality is exact, not
within a tolerance: the same operations in the same order give the same bits.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segearth_model.config import LanguageConfig
from segearth_model.language import PrefixState, SegEarthPhiModel

LANGUAGE = LanguageConfig(
    vocab_size=300, hidden_size=128, intermediate_size=320, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=512,
)


def _transformers_phi(language: LanguageConfig):
    from transformers import PhiConfig, PhiModel

    config = PhiConfig(
        vocab_size=language.vocab_size,
        hidden_size=language.hidden_size,
        intermediate_size=language.intermediate_size,
        num_hidden_layers=language.num_hidden_layers,
        num_attention_heads=language.num_attention_heads,
        hidden_act=language.hidden_act,
        layer_norm_eps=language.layer_norm_eps,
        max_position_embeddings=language.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": language.rope_theta,
            "partial_rotary_factor": language.partial_rotary_factor,
        },
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        qk_layernorm=False,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    return PhiModel(config).eval()


def _pair(dtype: torch.dtype, official_numerics: bool):
    torch.manual_seed(0)
    ours = SegEarthPhiModel(LANGUAGE, nn.Identity(), nn.Identity()).eval()
    for parameter in ours.parameters():
        nn.init.normal_(parameter, std=0.3)
    reference = _transformers_phi(LANGUAGE)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ours.official_numerics = official_numerics
    if official_numerics:
        # What the released loader did to the tables (see model/language.py), applied to the reference.
        stock = reference.rotary_emb.forward

        def rounded(x, position_ids):
            cos, sin = stock(torch.empty(0, dtype=torch.float32, device=x.device), position_ids)
            return cos.half().to(x.dtype), sin.half().to(x.dtype)

        reference.rotary_emb.forward = rounded
    return ours.to(dtype), reference.to(dtype)


def _reference_run(reference, embeds: torch.Tensor, prefix: PrefixState | None, rows: torch.Tensor | None):
    from transformers.cache_utils import DynamicCache

    start = 0 if prefix is None else prefix.length
    cache = DynamicCache() if prefix is None else DynamicCache(ddp_cache_data=prefix.select(rows, embeds.shape[0]))
    position_ids = torch.arange(start, start + embeds.shape[1]).unsqueeze(0)
    output = reference(inputs_embeds=embeds, position_ids=position_ids, cache=cache, use_cache=True)
    keys = tuple(layer.keys for layer in output.cache.layers)
    values = tuple(layer.values for layer in output.cache.layers)
    return output.last_hidden_state, keys, values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("official_numerics", [False, True])
def test_hidden_states_and_keys_are_bit_identical_to_transformers(dtype, official_numerics):
    ours, reference = _pair(dtype, official_numerics)
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(1, 7, LANGUAGE.hidden_size, generator=generator).to(dtype)
    windows = torch.randn(3, 20, LANGUAGE.hidden_size, generator=generator).to(dtype)
    questions = torch.randn(5, 6, LANGUAGE.hidden_size, generator=generator).to(dtype)
    single = torch.randn(2, 1, LANGUAGE.hidden_size, generator=generator).to(dtype)
    with torch.no_grad():
        # The head alone, the windows after the one-row head, then questions continuing chosen
        # windows' prefixes, and one token (no mask) after a prefix.
        head_hidden, head_state = ours.run_after_prefix(head)
        expected_hidden, keys, values = _reference_run(reference, head, None, None)
        assert torch.equal(head_hidden, expected_hidden)
        assert all(torch.equal(a, b) for a, b in zip(head_state.keys + head_state.values, keys + values))

        window_hidden, window_state = ours.run_after_prefix(windows, head_state)
        expected_hidden, keys, values = _reference_run(reference, windows, head_state, None)
        assert torch.equal(window_hidden, expected_hidden)
        assert all(torch.equal(a, b) for a, b in zip(window_state.keys + window_state.values, keys + values))

        rows = torch.tensor([2, 0, 0, 1, 2])
        question_hidden, _ = ours.run_after_prefix(questions, window_state, rows)
        assert torch.equal(question_hidden, _reference_run(reference, questions, window_state, rows)[0])

        rows = torch.tensor([1, 1])
        token_hidden, _ = ours.run_after_prefix(single, window_state, rows)
        assert torch.equal(token_hidden, _reference_run(reference, single, window_state, rows)[0])


def test_official_numerics_round_the_rotary_tables():
    ours, _ = _pair(torch.float32, official_numerics=False)
    embeds = torch.randn(1, 40, LANGUAGE.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact, _ = ours.run_after_prefix(embeds)
        ours.official_numerics = True
        rounded, _ = ours.run_after_prefix(embeds)
    difference = (exact - rounded).abs().max().item()
    assert 0 < difference < 1e-2


def test_an_unknown_activation_is_refused_by_name():
    import dataclasses

    with pytest.raises(ValueError, match="hidden_act 'swish'"):
        SegEarthPhiModel(dataclasses.replace(LANGUAGE, hidden_act="swish"), nn.Identity(), nn.Identity())
