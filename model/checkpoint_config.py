"""A checkpoint's ``config.json`` <-> :class:`SegEarthR1Config`.

Reading and writing live together so that the fields a written release records are exactly
the fields reading understands.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from .config import SegEarthR1Config, config_problem
from .errors import CheckpointError
from .names import CONFIG_FILE

# Our own record of the full architecture; the official code ignores unknown config fields.
ARCHITECTURE_FIELD = "segearth_architecture"


def _dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(cls(), f.name) if f.init else None
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = _dataclass_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def architecture_record(config: SegEarthR1Config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_checkpoint_json(hf_config: Mapping[str, Any], source: str = CONFIG_FILE) -> SegEarthR1Config:
    """The architecture a ``config.json`` describes.

    Released files only carry the language-model and projector fields; the rest are the
    released defaults. Files written by :func:`checkpoint_config_json` also record the whole
    architecture, and the conformance fixture's ``tiny_*`` fields mark the tiny preset.
    """
    try:
        if ARCHITECTURE_FIELD in hf_config:
            base = _dataclass_from_dict(SegEarthR1Config, hf_config[ARCHITECTURE_FIELD])
        elif "tiny_swin_embed_dim" in hf_config:
            base = SegEarthR1Config.tiny()
        else:
            base = SegEarthR1Config()
        config = SegEarthR1Config.from_checkpoint_config(hf_config, base=base)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: not a SegEarth-R1 configuration ({exc})") from exc
    problem = config_problem(config)
    if problem is not None:
        raise CheckpointError(f"{source}: not a SegEarth-R1 configuration ({problem})")
    return config


def read_checkpoint_config(directory: Path) -> SegEarthR1Config:
    path = directory / CONFIG_FILE
    try:
        hf_config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON") from exc
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{path}: not a configuration table")
    return config_from_checkpoint_json(hf_config, str(path))


def checkpoint_config_json(config: SegEarthR1Config, dtype: Any = "bfloat16") -> dict[str, Any]:
    """config.json for a release of ``config`` whose weights are stored in ``dtype``
    (a torch dtype or its name): the released fields plus what they cannot express."""
    hf_config = config.to_checkpoint_config()
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    released = SegEarthR1Config()
    if config.projector.in_channels != released.projector.in_channels:
        hf_config["mm_input_embeds"] = config.projector.in_channels
    if config != released:
        hf_config[ARCHITECTURE_FIELD] = architecture_record(config)
    return hf_config
