"""Every dimension of SegEarth-R1 in one place.

The defaults are the released checkpoints' values. The released ``config.json`` only
carries the language-model and projector fields; the mask-decoder values were fixed by
the training recipe, so they live here as defaults and are never read from disk.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class SwinConfig:
    patch_size: int = 4
    in_channels: int = 3
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class ProjectorConfig:
    """The token-compression connector: res5 -> two stride-2 convs -> 1x1 conv."""

    in_channels: int = 1024
    out_channels: int = 2048
    # Spatial size after the first stride-2 conv; the LayerNorms are shaped by it, which
    # is why the model accepts exactly one input size.
    grid_size: int = 16
    layer_norm_eps: float = 1e-5

    @property
    def num_visual_tokens(self) -> int:
        return (self.grid_size // 2) ** 2


@dataclass(frozen=True)
class LanguageConfig:
    """Phi-1.5 dimensions, named as transformers' PhiConfig names them."""

    vocab_size: int = 50297
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    hidden_act: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class DescriptionConfig:
    """The description projection: pooled question state + res5 -> one decoder query."""

    additional_dim: int = 512
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    perceiver_depth: int = 1
    ff_mult: int = 1
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class PixelDecoderConfig:
    conv_dim: int = 256
    mask_dim: int = 256
    encoder_layers: int = 6
    dim_feedforward: int = 1024
    num_heads: int = 8
    num_levels: int = 3
    num_points: int = 4
    common_stride: int = 4
    group_norm_groups: int = 32


@dataclass(frozen=True)
class MaskDecoderConfig:
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    num_layers: int = 9
    # Sizes the query tables that the checkpoint carries but inference never reads.
    num_object_queries: int = 100
    num_feature_levels: int = 3


@dataclass(frozen=True)
class SegEarthR1Config:
    image_size: int = 1024
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    swin: SwinConfig = field(default_factory=SwinConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    description: DescriptionConfig = field(default_factory=DescriptionConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    pad_token_id: int = 50295
    seg_token_id: int = 50296

    @property
    def local_feature_dim(self) -> int:
        """Channels of the last Swin stage, which the description projection attends to."""
        return self.swin.stage_channels[-1]

    @classmethod
    def tiny(cls) -> "SegEarthR1Config":
        """The shrunken architecture of the conformance fixture; also `tiny-random`."""
        return cls(
            image_size=256,
            swin=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=7),
            projector=ProjectorConfig(in_channels=128, out_channels=64, grid_size=4),
            language=LanguageConfig(
                vocab_size=1002, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4
            ),
            description=DescriptionConfig(additional_dim=32, perceiver_heads=4, perceiver_dim_head=8),
            pixel_decoder=PixelDecoderConfig(conv_dim=64, mask_dim=64, encoder_layers=2, dim_feedforward=128, num_heads=4),
            mask_decoder=MaskDecoderConfig(hidden_dim=64, num_heads=4, dim_feedforward=128, num_layers=3, num_object_queries=4),
            pad_token_id=1000,
            seg_token_id=1001,
        )

    @classmethod
    def from_checkpoint_config(cls, hf_config: Mapping[str, Any], *, base: "SegEarthR1Config | None" = None) -> "SegEarthR1Config":
        """Read the fields a checkpoint's ``config.json`` carries; keep ``base`` for the rest.

        The ``tiny_*`` fields are the conformance fixture's way of recording dimensions the
        official code hard-codes.
        """
        base = base or cls()
        lang_fields = {f.name for f in dataclasses.fields(LanguageConfig)}
        language = dataclasses.replace(base.language, **{k: hf_config[k] for k in lang_fields if k in hf_config})
        projector = dataclasses.replace(
            base.projector,
            in_channels=hf_config.get("mm_input_embeds", base.projector.in_channels),
            out_channels=hf_config.get("projector_outdim", base.projector.out_channels),
            grid_size=hf_config.get("tiny_projector_size", base.projector.grid_size),
        )
        description = dataclasses.replace(
            base.description,
            additional_dim=hf_config.get("tiny_additional_dim", base.description.additional_dim),
            perceiver_heads=hf_config.get("tiny_dproj_heads", base.description.perceiver_heads),
            perceiver_dim_head=hf_config.get("tiny_dproj_dim_head", base.description.perceiver_dim_head),
        )
        pixel_decoder = dataclasses.replace(
            base.pixel_decoder,
            dim_feedforward=hf_config.get("tiny_pixel_decoder_dim_feedforward", base.pixel_decoder.dim_feedforward),
        )
        return dataclasses.replace(
            base, language=language, projector=projector, description=description, pixel_decoder=pixel_decoder
        )

    def to_checkpoint_config(self) -> dict[str, Any]:
        """The ``config.json`` a release of this architecture carries (released field names)."""
        lang = dataclasses.asdict(self.language)
        return {
            "architectures": ["SegEarthR1"],
            "model_type": "llava_phi",
            **lang,
            "attention_dropout": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "rope_scaling": None,
            "qk_layernorm": False,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "output_attentions": True,
            "initializer_range": 0.02,
            "mask_decode_train": True,
            "mm_vision_tower": "pre_trained/Swin_base/model_final_54b88a.pkl",
            "swin_type": "base",
            "mm_projector_type": "SparseConv_1",
            "mm_hidden_size": 256,
            "projector_outdim": self.projector.out_channels,
            "use_mm_proj": True,
            "with_norm": True,
            "with_layernorm": False,
            "mm_use_im_patch_token": False,
            "mm_use_im_start_end": False,
            "tune_mm_mlp_adapter": False,
            "freeze_mm_mlp_adapter": False,
            "image_aspect_ratio": "square",
            "image_grid_pinpoints": None,
            "transformers_version": "4.36.2",
        }


def config_problem(config: Any, prefix: str = "") -> str | None:
    """What makes ``config`` (a :class:`SegEarthR1Config` or one of its parts) unbuildable, or None.

    Every field must have the type and sign of its default (whole numbers stay whole, a
    list keeps its length where the architecture fixes it); a ``config.json`` of the wrong
    types would otherwise fail deep inside the network's construction, naming nothing.
    """
    for f in dataclasses.fields(config):
        name, value, default = prefix + f.name, getattr(config, f.name), getattr(type(config)(), f.name)
        if dataclasses.is_dataclass(default):
            if type(value) is not type(default):
                return f"{name} must be a table of {type(default).__name__} fields, not {value!r}"
            problem = config_problem(value, name + ".")
        elif isinstance(default, tuple):
            problem = _sequence_problem(name, value, default)
        else:
            problem = _number_problem(name, value, default)
        if problem is not None:
            return problem
    if isinstance(config, SwinConfig) and len(config.depths) != len(config.num_heads):
        return f"{prefix}depths and {prefix}num_heads must have one entry per stage"
    if isinstance(config, LanguageConfig):
        if config.hidden_size % config.num_attention_heads:
            return f"{prefix}hidden_size {config.hidden_size} must be a multiple of num_attention_heads"
        if not config.partial_rotary_factor <= 1:
            return f"{prefix}partial_rotary_factor must be at most 1, not {config.partial_rotary_factor}"
    return None


def _number_problem(name: str, value: Any, default: Any) -> str | None:
    if isinstance(default, str):
        return None if isinstance(value, str) else f"{name} must be text, not {value!r}"
    if isinstance(default, int):
        if type(value) is not int:
            return f"{name} must be a whole number, not {value!r}"
        least = 0 if name.endswith("_token_id") else 1
        return None if value >= least else f"{name} must be at least {least}, not {value}"
    if isinstance(default, float):
        if type(value) not in (int, float) or not math.isfinite(value):
            return f"{name} must be a number, not {value!r}"
        return None if value > 0 else f"{name} must be positive, not {value}"
    return None


def _sequence_problem(name: str, value: Any, default: tuple) -> str | None:
    whole = isinstance(default[0], int)
    kind = "whole numbers" if whole else "numbers"
    if not isinstance(value, tuple) or not value:
        return f"{name} must be a list of {kind}, not {value!r}"
    if name.endswith(("pixel_mean", "pixel_std")) and len(value) != len(default):
        return f"{name} must have {len(default)} entries (red, green, blue), not {len(value)}"
    if any(type(v) is not int if whole else type(v) not in (int, float) for v in value) or any(v <= 0 for v in value):
        return f"{name} must be a list of positive {kind}, not {list(value)!r}"
    return None
