"""Image tensors to PIL/PNG, with diffusers' own conversion (same rounding as its pipelines)."""

from __future__ import annotations

import io

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image


def to_pil(image: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> PIL images."""
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(image))


def to_png(image: torch.Tensor) -> list[bytes]:
    out = []
    for im in to_pil(image):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out
