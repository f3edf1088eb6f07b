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
from .state_dict import to_release_state_dict

SEED = 20250101

# Words the tiny tokenizer learns its merges from: the prompt template and a remote-sensing
# vocabulary, so that prompts and typical questions encode into few tokens.
_CORPUS_WORDS = """
the a an of in on at to from with by for and or not no is are was were be been this that these those which what where
who how why there here image scene photo picture area region part object objects building buildings house houses roof
roofs road roads street streets highway bridge bridges river rivers lake lakes pond ponds sea ocean coast coastline beach
harbor harbour port ship ships boat boats vessel airport runway runways taxiway plane planes aircraft airplane helicopter
field fields cropland crop crops forest forests tree trees grass grassland park parks garden gardens water land soil sand
desert mountain mountains hill hills valley cloud clouds shadow shadows snow ice glacier city cities town village urban
rural industrial factory factories warehouse tank tanks storage parking lot lots car cars vehicle vehicles truck trucks
train railway railroad station stadium court courts tennis basketball baseball soccer football track swimming pool pools
playground school church hospital tower towers chimney dam canal channel pier dock container containers crane solar panel
panels wind turbine turbines power plant substation pipeline greenhouse orchard vineyard paddy wetland marsh island
large small big tiny long short wide narrow tall high low bright dark white black red green blue yellow brown gray grey
round square rectangular circular straight curved north south east west left right top bottom center centre middle edge
near far across along between inside outside above below next beside around largest smallest longest nearest
could would should can may might will must use used using land landing take off cross flow flows grow grows live lives
store park stop build built cover covers covered surround surrounds surrounded connect connects connected contain contains
please doing reasoning referring segmentation according following instruction segment find show mark locate identify
highlight sure it is there target object in the image you are helpful language vision assistant able understand visual
content user provides assist variety tasks using natural inst sys seg refer answer suitable strip runway airport which
""".split()
_CORPUS = (
    " ".join(_CORPUS_WORDS)
    + " "
    + " ".join(word.capitalize() for word in _CORPUS_WORDS)
    + " [INST] <<SYS>> <</SYS>> [/INST] 0 1 2 3 4 5 6 7 8 9 10 100 , . ? ! : ; ' \" ( ) -\n"
)
_EOS = "<|endoftext|>"


def build_tiny_tokenizer():
    """A byte-level BPE with ids 0..999, ``[PAD]`` = 1000 and ``[SEG]`` = 1001 (the tiny vocabulary).

    Trained in memory on a fixed text: the same merges on every run and machine.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=[_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    backend.train_from_iterator([_CORPUS] * 3, trainer=trainer)
    if backend.get_vocab_size() != 1000:
        raise RuntimeError(f"tiny tokenizer learned {backend.get_vocab_size()} tokens instead of 1000")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=_EOS, eos_token=_EOS, unk_token=_EOS, pad_token="[PAD]"
    )
    tokenizer.add_tokens(["[SEG]"])
    return tokenizer


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
    model.is_placeholder = True
    model.placeholder_notice = PLACEHOLDER_NOTICE
    return model, tokenizer
