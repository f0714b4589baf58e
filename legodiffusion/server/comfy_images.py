"""ComfyUI images and masks: where a graph's IMAGE and MASK links come from, and the uploaded
image a request input is made of.

Parsing a graph yields an :class:`ImageSource` per image input of the workflow (the upload's name
and what the graph does to it); the router turns them into PIL images with :func:`images_for`
once the prompt is accepted. What ComfyUI does to an image before encoding is done here, on the
uploaded file: ``ImageScale`` resizes it (PIL's filter of that name; ``area`` is PIL's box filter,
``nearest-exact`` its nearest), ``LoadImageMask`` / ``LoadImage``'s MASK read a channel (alpha
inverted: transparent is what to repaint, as ComfyUI reads it), a mask is scaled to its image's
size, and ``VAEEncodeForInpaint``'s ``grow_mask_by`` dilates it with ComfyUI's own kernel. A mask becomes a grey image, white
where the image is repainted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from legodiffusion.server.comfy_graph import ComfyError, linked

#: ImageScale's methods -> PIL resampling filter names
RESAMPLE = {"nearest-exact": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "area": "BOX", "lanczos": "LANCZOS"}
CHANNELS = ("alpha", "red", "green", "blue")
#: largest side ImageScale may ask for, as ComfyUI bounds it
MAX_SIDE = 16384


@dataclass(frozen=True)
class Resize:
    """An ``ImageScale``: to width x height (0: keep the aspect ratio from the other), center-cropped first when ``crop``."""

    width: int
    height: int
    method: str
    crop: bool


@dataclass(frozen=True)
class ImageSource:
    """An uploaded image a request input is made from, and what the graph does to it."""

    upload: str  # the file name LoadImage / LoadImageMask reads
    node: str  # that loader, for errors
    class_type: str
    resizes: tuple[Resize, ...] = ()  # ImageScale nodes, in the order they apply
    channel: str | None = None  # a mask: the channel it is read from
    grow: int = 0  # a mask: VAEEncodeForInpaint's grow_mask_by


def image_source(prompt: dict, link: Any, where: str) -> ImageSource:
    """The IMAGE behind ``link``: LoadImage's image, under any ``ImageScale`` nodes."""
    nid, node = linked(prompt, link, where)
    resizes = []
    while node.get("class_type") == "ImageScale":
        args = node.get("inputs", {})
        method, crop = args.get("upscale_method", "nearest-exact"), args.get("crop", "disabled")
        if method not in RESAMPLE:
            raise ComfyError(nid, "ImageScale", f"upscale_method {method!r} is not supported; supported: {sorted(RESAMPLE)}")
        if crop not in ("disabled", "center"):
            raise ComfyError(nid, "ImageScale", f"crop must be 'disabled' or 'center', got {crop!r}")
        width, height = int(args.get("width", 512)), int(args.get("height", 512))
        if not (0 <= width <= MAX_SIDE and 0 <= height <= MAX_SIDE):
            raise ComfyError(nid, "ImageScale", f"width and height must be within 0-{MAX_SIDE}, got {width}x{height}")
        resizes.append(Resize(width, height, method, crop == "center"))
        link = args.get("image")
        nid, node = linked(prompt, link, f"node {nid} image")
    if node.get("class_type") != "LoadImage" or link[1] != 0:
        raise ComfyError(nid, node.get("class_type"), f"{where} must be LoadImage's image (under ImageScale nodes, if any)")
    return ImageSource(_name(nid, node), nid, "LoadImage", tuple(reversed(resizes)))


def mask_source(prompt: dict, link: Any, where: str, grow: int = 0) -> ImageSource:
    """The MASK behind ``link``: LoadImageMask's, or LoadImage's second output (its alpha)."""
    nid, node = linked(prompt, link, where)
    ct = node.get("class_type")
    if ct == "LoadImageMask":
        channel = node.get("inputs", {}).get("channel", "alpha")
        if channel not in CHANNELS:
            raise ComfyError(nid, ct, f"channel must be one of {list(CHANNELS)}, got {channel!r}")
    elif ct == "LoadImage" and link[1] == 1:
        channel = "alpha"
    else:
        raise ComfyError(nid, ct, f"{where} must come from LoadImageMask or LoadImage's MASK output")
    if not 0 <= grow <= 64:
        raise ComfyError(nid, ct, f"grow_mask_by must be within 0-64, got {grow}")
    return ImageSource(_name(nid, node), nid, ct, channel=channel, grow=grow)


def _name(nid: str, node: dict) -> str:
    name = node.get("inputs", {}).get("image")
    if not isinstance(name, str) or not name:
        raise ComfyError(nid, node.get("class_type"), "image must be the name of an uploaded file (POST /upload/image)")
    return name


def images_for(sources: dict[str, ImageSource], uploads) -> dict[str, Any]:
    """The PIL images of a job's image inputs, from ``uploads.get(name)`` (images RGB; a mask
    grey, white where to repaint, at its image's size: ComfyUI scales a mask to the pixels it
    masks, then grows it)."""
    out = {name: image_for(src, uploads) for name, src in sources.items() if src.channel is None}
    for name, src in sources.items():
        if src.channel is not None:
            image = out.get("image")
            out[name] = image_for(src, uploads, None if image is None else image.size)
    return out


def image_for(source: ImageSource, uploads, size: tuple[int, int] | None = None) -> Any:
    """The PIL image ``source`` stands for (an image: RGB; a mask: grey, white where to repaint,
    resized bilinearly to ``size`` first where given)."""
    image = uploads.get(source.upload)
    if image is None:
        raise ComfyError(source.node, source.class_type, f"image {source.upload!r} was not uploaded (POST /upload/image), or has expired")
    if source.channel is not None:
        return _mask(image, source.channel, source.grow, size)
    image = image.convert("RGB")
    for r in source.resizes:
        image = _resize(image, r)
    return image


def _resize(image, r: Resize):
    from PIL import Image, ImageOps

    w0, h0 = image.size
    width = r.width or max(1, round(w0 * r.height / h0))
    height = r.height or max(1, round(h0 * r.width / w0))
    if not r.width and not r.height:
        return image
    resample = getattr(Image.Resampling, RESAMPLE[r.method])
    if r.crop:
        return ImageOps.fit(image, (width, height), resample, centering=(0.5, 0.5))
    return image.resize((width, height), resample)


def _mask(image, channel: str, grow: int, size: tuple[int, int] | None):
    """ComfyUI's mask of ``image`` (1 where to repaint), as a grey PIL image of ``size``; dilated
    by ``grow`` pixels with VAEEncodeForInpaint's kernel (a grow x grow square over the rounded mask)."""
    import numpy as np
    from PIL import Image, ImageOps

    band = image.convert("RGBA").getchannel(channel[0].upper())
    if channel == "alpha":
        band = ImageOps.invert(band)
    if size is not None and band.size != size:
        band = band.resize(size, Image.Resampling.BILINEAR)
    if not grow:
        return band
    import torch

    m = torch.from_numpy(np.asarray(band, dtype=np.float32) / 255.0)[None, None].round()
    grown = torch.nn.functional.conv2d(m, torch.ones(1, 1, grow, grow), padding=math.ceil((grow - 1) / 2)).clamp(0, 1)
    grown = grown[0, 0, : m.shape[-2], : m.shape[-1]]
    return Image.fromarray((grown.numpy() * 255).round().astype(np.uint8), mode="L")
