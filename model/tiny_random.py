"""``tiny-random``: the tiny architecture with seeded random weights and a small tokenizer.

It exists so that every step of the tool (tests, ``segearth doctor``, a user checking an
install) can run offline in a second or two. Its masks mean nothing; anything that shows
results from it must say so with :data:`PLACEHOLDER_NOTICE`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .build import build_empty_model, materialize
from .config import SegEarthR1Config
from .names import PLACEHOLDER_NOTICE, TINY_RANDOM
from .prompt_cache import source_fingerprint
from .state_dict import to_release_state_dict
from .tokenizer import build_tiny_tokenizer

SEED = 20250101

def seeded_value(
    name: str, module: nn.Module | None, shape: torch.Size | list[int], generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A random value for parameter ``name`` of ``module`` that keeps activations near unit scale."""
    noise = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return 1.0 + 0.1 * noise if name == "weight" else 0.05 * noise
    if isinstance(module, nn.Embedding) or name in {"seg_query", "level_embed", "relative_position_bias_table"}:
        return 0.5 * noise
    if len(shape) < 2:
        return 0.05 * noise
    # Unit-variance activations through every linear and convolution, whatever its width.
    return noise / math.sqrt(math.prod(shape[1:]))


def parameter_owners(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """state-dict key -> (parameter name, module holding it)."""
    return {
        f"{prefix}.{name}" if prefix else name: (name, module)
        for prefix, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
    }


def random_state_dict(
    model: nn.Module, seed: int = SEED, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Seeded values for every float tensor of ``model``'s state dict (module layout).

    Integer buffers (Swin's relative-position indices) keep the values the model computed.
    Works on a model built by ``build_empty_model`` (only shapes are read).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    owners = parameter_owners(model)
    state = {}
    for key, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            state[key] = tensor.clone().to(device)
            continue
        name, module = owners.get(key, (key.rsplit(".", 1)[-1], None))
        state[key] = seeded_value(name, module, tensor.shape, generator, dtype)
    return state


def build_tiny_random(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, official_numerics: bool = False
):
    """(model, tokenizer) of ``tiny-random``; the model is flagged ``is_placeholder``."""
    tokenizer = build_tiny_tokenizer()
    config = SegEarthR1Config.tiny()
    if tokenizer.pad_token_id != config.pad_token_id or tokenizer.convert_tokens_to_ids("[SEG]") != config.seg_token_id:
        raise RuntimeError("tiny tokenizer ids disagree with the tiny configuration")
    model = build_empty_model(config)
    state = to_release_state_dict(random_state_dict(model), config)
    model = materialize(
        model, config, state, device=torch.device(device), dtype=dtype, official_numerics=official_numerics, source=TINY_RANDOM
    )
    model.name_or_path = TINY_RANDOM
    # The weights are a function of this package's code, seeds included.
    model.weights_fingerprint = f"{TINY_RANDOM}:{source_fingerprint()}"
    model.is_placeholder = True
    model.placeholder_notice = PLACEHOLDER_NOTICE
    return model, tokenizer
