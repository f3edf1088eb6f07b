"""Tokenizers without torch: a checkpoint's own, and the tiny one ``tiny-random`` uses.

Loading a tokenizer needs no weights, so a question too long for the model's context can
be refused before the network is built (:func:`.prompt.question_room`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import CheckpointError

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


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # AutoTokenizer also parses config.json, whose released fields (model_type llava_phi,
    # rope_scaling) transformers warns about; none of that concerns the tokenizer.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: tokenizer files cannot be loaded ({first[:200]})") from exc
    finally:
        transformers_logging.set_verbosity(verbosity)
