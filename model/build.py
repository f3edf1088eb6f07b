"""Building the network without allocating its weights, then filling it tensor by tensor."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from .config import SegEarthR1Config
from .errors import CheckpointError
from .segearth_r1 import SegEarthR1
from .state_dict import FUSED_QKV, convert_checkpoint_state_dict, release_entries
from .weights import cast_weight

# torch.nn.init's in-place initialisers that modules' reset_parameters call.
_INITIALISERS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


@contextmanager
def parameters_on_meta():
    """Create every parameter on the meta device while a model is built; buffers stay real.

    Buffers the checkpoint does not carry (rotary frequencies, Swin's relative-position
    indices before loading) are computed in ``__init__`` and must keep their values, which a
    plain ``torch.device("meta")`` context would throw away. The modules' own random
    initialisation of meta parameters is skipped: it would compute nothing, and torch runs
    some of it (``normal_`` on meta) through its compiler stack, whose first import costs 1.2 s.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    def skipped_on_meta(initialise):
        def initialise_unless_meta(tensor, *args, **kwargs):
            return tensor if tensor.is_meta else initialise(tensor, *args, **kwargs)

        return initialise_unless_meta

    initialisers = {name: getattr(nn.init, name) for name in _INITIALISERS}
    nn.Module.register_parameter = register_on_meta
    for name, initialise in initialisers.items():
        setattr(nn.init, name, skipped_on_meta(initialise))
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        for name, initialise in initialisers.items():
            setattr(nn.init, name, initialise)


def build_empty_model(config: SegEarthR1Config) -> nn.Module:
    """A ``SegEarthR1`` whose parameters live on the meta device (no weight memory)."""
    with parameters_on_meta():
        return SegEarthR1(config)


def release_layout_shapes(model: nn.Module) -> dict[str, tuple[list[int], torch.dtype]]:
    """Every key a released checkpoint of this architecture holds, with its shape and module dtype.

    Read from the shapes alone: ``model`` comes from :func:`build_empty_model`, and fusing
    its meta QKV parameters as tensors would run torch's meta kernels through its compiler
    stack (1.2 s to import on first use).
    """
    shapes: dict[str, tuple[list[int], torch.dtype]] = {}
    for key, value in release_entries(model.state_dict()):
        if isinstance(value, tuple):
            # q, k and v interleaved per head: their rows side by side.
            shapes[key] = ([sum(p.shape[0] for p in value), *value[0].shape[1:]], value[0].dtype)
        else:
            shapes[key] = (list(value.shape), value.dtype)
    return shapes


def _prepare(
    tensor: torch.Tensor, module_dtype: torch.dtype, device: torch.device, dtype: torch.dtype, official_numerics: bool
) -> torch.Tensor:
    """``tensor`` in the module's precision on ``device``."""
    if not tensor.is_floating_point():
        return tensor.to(device=device, dtype=module_dtype)
    return cast_weight(tensor, device, dtype, official_numerics)


def materialize(
    model: nn.Module,
    config: SegEarthR1Config,
    tensors: Iterator[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    official_numerics: bool = False,
    source: str = "checkpoint",
) -> nn.Module:
    """Fill a model built by :func:`build_empty_model` from released-layout tensors, strictly.

    Tensors are converted, cast and moved one at a time, so peak memory stays near one
    copy of the model in its target precision. Tensors already in the target precision and
    place become the model's own: the caller hands over memory it owns (the loader's come
    from :func:`.weights.owned_tensors`).
    Module-layout keys (``q_proj``...) are accepted as they are.
    """
    module_dtypes = {key: t.dtype for key, t in model.state_dict().items()}
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    state: dict[str, torch.Tensor] = {}
    for key, tensor in items:
        # Cast first, then split the fused QKV: the pieces are the only lasting copies.
        module_key = key if key in module_dtypes else FUSED_QKV.sub(r"\1q_proj.\2", key)
        if module_key not in module_dtypes:
            raise CheckpointError(f"{source}: unexpected key {key} (not part of the SegEarth-R1 architecture)")
        prepared = _prepare(tensor, module_dtypes[module_key], device, dtype, official_numerics)
        del tensor
        state.update(convert_checkpoint_state_dict({key: prepared}, config, source=source))
        del prepared
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{source}: {' '.join(line.strip() for line in first[:3])[:300]}") from exc
    del state
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise CheckpointError(f"{source}: no value for {left_on_meta[0]}")
    model.to(device)
    model.requires_grad_(False)
    model.eval()
    model.official_numerics = official_numerics
    return model
