"""Editing: an input image to latents, the starting point of image-to-image and inpainting.

``prepare_image`` resizes and normalises the image as the family's editing pipeline does;
``vae_encode`` samples its latents with the request's generator and passes the generator on, so
the initial noise (``init_latents`` in its ``img2img`` mode) continues the same draws as diffusers.
"""

from __future__ import annotations

from legodiffusion.ops import sampling
from legodiffusion.ops.base import SEED_PORT, BadValue, Item, Operator, Port, Signature
from legodiffusion.ops.latents import check_size, size_factor
from legodiffusion.ops.lazy import lazy_module
from legodiffusion.ops.vae import scale

torch = lazy_module("torch")
image_processor = lazy_module("diffusers.image_processor")

#: the generation size of an edit
SIZE_PORTS = {
    "height": Port("int", optional=True, ge=1, doc="pixels; the image's own size (rounded down to the factor) if null"),
    "width": Port("int", optional=True, ge=1),
}


class PrepareImage(Operator):
    name = "prepare_image"
    doc = "Resize an input image to the generation size (its own, rounded down to the size factor, by default) and scale it to [-1, 1]."
    component = "config"
    light = True
    sized_by = "image"
    modes = {"default": Signature(inputs={"image": Port("image"), **SIZE_PORTS}, outputs={"pixels": "pixels"})}

    def check(self, mode, values, cfg):
        if cfg is not None:
            check_size(values.get("height"), values.get("width"), size_factor(cfg.family, cfg.vae_scale_factor), cfg.family)

    def run(self, model, mode: str, items: list[Item]):
        proc = image_processor.VaeImageProcessor(vae_scale_factor=size_factor(model.family, model.vae_scale_factor))
        out = []
        for it in items:
            self.check(mode, it.inputs, model)
            pixels = proc.preprocess(it.inputs["image"], height=it.inputs.get("height"), width=it.inputs.get("width"))
            out.append({"pixels": pixels.to(torch.float32).contiguous()})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"image": torch.rand(1, 3, size, size), "height": size, "width": size}) for _ in range(batch)]


#: families whose VAE encoding (and latent scaling, :func:`scale`) is implemented: FLUX.2's
#: patchified batch-norm latents and Qwen-Image's 3D VAE are not
ENCODE_FAMILIES = frozenset({"sd", "sdxl", "sd3", "flux", "zimage"})


class VaeEncode(Operator):
    name = "vae_encode"
    doc = (
        "Encode pixels in [-1, 1] with the VAE, sample the latent distribution with the request's generator (seeded "
        "with `seed`, or continued from `rng`) and scale the latents as the family's pipeline does; the generator goes on."
    )
    component = "vae"
    modes = {
        "default": Signature(
            inputs={"pixels": Port("pixels"), "seed": SEED_PORT, "rng": Port("rng", optional=True)},
            outputs={"latents": "latent", "rng": "rng"},
        )
    }

    def check(self, mode, values, cfg):
        if cfg is not None and cfg.family not in ENCODE_FAMILIES:
            raise BadValue("pixels", f"encoding images is not supported for a {cfg.family} model; families: {sorted(ENCODE_FAMILIES)}")

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:  # one generator per request: encoded one by one, as the pipelines do
            generator = sampling.request_generator(it.inputs)
            pixels = it.inputs["pixels"].to(device=model.device, dtype=model.dtype)
            with torch.inference_mode():
                latents = model.encode(pixels).latent_dist.sample(generator)
            out.append({"latents": scale(model, latents), "rng": generator.get_state()})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"pixels": torch.rand(1, 3, size, size) * 2 - 1, "seed": i}) for i in range(batch)]
