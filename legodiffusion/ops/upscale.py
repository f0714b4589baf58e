"""Latent upscaling: the step between the two stages of a hires workflow.

The latents are resized with ``torch.nn.functional.interpolate(latents, scale_factor=scale,
mode=method)`` exactly as a diffusers user between a text-to-image call (``output_type="latent"``)
and an image-to-image call does it, in the latents' own dtype. The scaled size must stay a multiple
of the family's size factor, so the second stage runs at a size its pipeline accepts.
"""

from __future__ import annotations

import math

from legodiffusion.ops import examples
from legodiffusion.ops.base import BadValue, Item, Operator, Port, Signature
from legodiffusion.ops.latents import size_factor
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")

#: ``interpolate`` modes for 4-D latents (ComfyUI's LatentUpscale offers these but "nearest", and "bislerp")
METHODS = ("nearest-exact", "bilinear", "bicubic", "area", "nearest")
#: largest scale factor, as ComfyUI's LatentUpscaleBy bounds it
SCALE_MAX = 8.0


def _method(value: str) -> None:
    if value not in METHODS:
        raise ValueError(f"must be one of {list(METHODS)}, got {value!r}")


def _positive(value) -> None:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value!r}")


def scaled(pixels: int, scale: float) -> int:
    """The size ``interpolate`` makes of ``pixels`` at ``scale`` (floor of the product, as torch)."""
    return math.floor(pixels * scale)


class UpscaleLatents(Operator):
    name = "upscale_latents"
    doc = "Resize latents by a factor with torch.nn.functional.interpolate (the hires step between two sampling stages)."
    component = "config"
    light = True
    modes = {
        "default": Signature(
            inputs={
                "latents": Port("latent"),
                "scale": Port("float", le=SCALE_MAX, form=_positive, doc=f"the factor, 0 < scale <= {SCALE_MAX:g}"),
                "method": Port("text", form=_method, doc=f"interpolate's mode: {', '.join(METHODS)}"),
                "height": Port(
                    "int", optional=True, ge=1, doc="pixels of the latents given (null: the model's native size), to check the scaled size"
                ),
                "width": Port("int", optional=True, ge=1),
            },
            outputs={"latents": "latent"},
        )
    }

    def check(self, mode, values, cfg):
        """The scaled size a multiple of the size factor (checked at submission from the first
        stage's size, and again on the latents themselves when the node runs)."""
        scale = values.get("scale")
        if cfg is None or scale is None:
            return
        factor = size_factor(cfg.family, cfg.vae_scale_factor)
        for port in ("height", "width"):
            pixels = values.get(port) or cfg.default_size
            latent = pixels // cfg.vae_scale_factor
            # the image the second stage makes: interpolate's size of the latents, in pixels
            target = scaled(latent, scale) * cfg.vae_scale_factor
            if target < factor or target % factor or not math.isclose(pixels * scale, target, abs_tol=1e-6):
                raise BadValue(
                    "scale",
                    f"scale {scale:g} makes {port} {pixels} into {pixels * scale:g} pixels, not a positive multiple of {factor} "
                    f"for a {cfg.family} model; choose a scale that does",
                )

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            latents = it.inputs["latents"]
            h, w = latents.shape[-2:]
            f = model.vae_scale_factor
            self.check(mode, {"scale": it.inputs["scale"], "height": h * f, "width": w * f}, model)
            up = torch.nn.functional.interpolate(latents, scale_factor=float(it.inputs["scale"]), mode=it.inputs["method"])
            out.append({"latents": up})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"latents": examples.latents(cfg, size, device), "scale": 2.0, "method": "nearest-exact"}) for _ in range(batch)]
