"""Image and mask preparation exactly as the official evaluation does it.

OpenCV is used on purpose: its uint8 bilinear resize works in 11-bit fixed point, and a
float ``F.interpolate`` lands one grey level off on about a tenth of the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .config import SegEarthR1Config


@dataclass(frozen=True)
class PadInfo:
    """Where the resized image sits inside the square canvas, and what it came from."""

    top: int
    left: int
    new_h: int
    new_w: int
    orig_h: int
    orig_w: int
    size: int


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w): the long side becomes ``size``, the short side is truncated, as the official code does."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels: {height}x{width}")
    if height >= width:
        return size, max(1, int(width * (size / height)))
    return max(1, int(height * (size / width))), size


def _pad_info(height: int, width: int, size: int) -> PadInfo:
    new_h, new_w = fitted_size(height, width, size)
    return PadInfo(
        top=(size - new_h) // 2, left=(size - new_w) // 2, new_h=new_h, new_w=new_w, orig_h=height, orig_w=width, size=size
    )


def resize_and_pad(image_hwc_uint8: np.ndarray, size: int = 1024) -> tuple[np.ndarray, PadInfo]:
    """Scale an RGB uint8 image so its long side is ``size`` and centre it on a zero canvas."""
    image = np.asarray(image_hwc_uint8)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an HxWxC uint8 image, got {image.dtype} with shape {image.shape}")
    info = _pad_info(image.shape[0], image.shape[1], size)
    resized = cv2.resize(np.ascontiguousarray(image), (info.new_w, info.new_h), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # cv2 drops a single channel axis
        resized = resized[:, :, None]
    canvas = np.zeros((size, size, image.shape[2]), dtype=np.uint8)
    canvas[info.top : info.top + info.new_h, info.left : info.left + info.new_w] = resized
    return canvas, info


def resize_mask_nearest(mask: np.ndarray, padinfo: PadInfo) -> np.ndarray:
    """Bring a ground-truth mask (HxW, original size) onto the same canvas as its image."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != (padinfo.orig_h, padinfo.orig_w):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({padinfo.orig_h}, {padinfo.orig_w})")
    as_bool = mask.dtype == np.bool_
    source = mask.astype(np.uint8) if as_bool else np.ascontiguousarray(mask)
    resized = cv2.resize(source, (padinfo.new_w, padinfo.new_h), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((padinfo.size, padinfo.size), dtype=source.dtype)
    canvas[padinfo.top : padinfo.top + padinfo.new_h, padinfo.left : padinfo.left + padinfo.new_w] = resized
    return canvas.astype(np.bool_) if as_bool else canvas


def normalize(images: torch.Tensor, config: SegEarthR1Config | None = None) -> torch.Tensor:
    """RGB 0..255 (uint8 or float, channels at dim -3) -> float32 ``(x - mean) / std``.

    Zero padding therefore becomes ``-mean/std``, as in the official input.
    """
    config = config or SegEarthR1Config()
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W) RGB images, got shape {tuple(images.shape)}")
    mean = torch.tensor(config.pixel_mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(config.pixel_std, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images.to(torch.float32) - mean) / std


def unpad_and_resize(logits_or_mask: torch.Tensor | np.ndarray, padinfo: PadInfo) -> torch.Tensor | np.ndarray:
    """Cut the image area out of a canvas-sized prediction (..., S, S) and scale it to the original size.

    Float inputs (logits, probabilities) are resized bilinearly (align_corners=False);
    bool and integer masks by nearest neighbour. Numpy in, numpy out.
    """
    as_numpy = isinstance(logits_or_mask, np.ndarray)
    tensor = torch.from_numpy(logits_or_mask) if as_numpy else logits_or_mask
    if tensor.shape[-2:] != (padinfo.size, padinfo.size):
        raise ValueError(f"prediction shape {tuple(tensor.shape)} does not end in the canvas size {padinfo.size}")
    crop = tensor[..., padinfo.top : padinfo.top + padinfo.new_h, padinfo.left : padinfo.left + padinfo.new_w]
    lead = crop.shape[:-2]
    flat = crop.reshape(-1, 1, padinfo.new_h, padinfo.new_w)
    target = (padinfo.orig_h, padinfo.orig_w)
    if tensor.is_floating_point():
        out = F.interpolate(flat, size=target, mode="bilinear", align_corners=False)
    else:
        # interpolate wants floats; 0/1 and small label values survive the round trip exactly.
        out = F.interpolate(flat.to(torch.float32), size=target, mode="nearest").to(tensor.dtype)
    out = out.reshape(*lead, *target)
    return out.numpy() if as_numpy else out
