"""VAE decode: latents to an image tensor in [0, 1], shaped (1, 3, H, W)."""

from __future__ import annotations

from legodiffusion.ops import examples, family_flux2, family_qwenimage
from legodiffusion.ops.base import Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
image_processor = lazy_module("diffusers.image_processor")


def unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    """Undo the latent scaling the way each family's pipeline does before decoding."""
    if family_flux2.is_flux2_vae(vae):  # batch-norm statistics and 2x2 patches
        return family_flux2.unscale(vae, latents)
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:  # SDXL variants with latent statistics
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return latents * std / cfg.scaling_factor + mean
    shift = getattr(cfg, "shift_factor", None)
    if shift is not None:  # SD3, Flux
        return latents / cfg.scaling_factor + shift
    return latents / cfg.scaling_factor


def scale(vae, latents: torch.Tensor) -> torch.Tensor:
    """The latent scaling each family's pipeline applies after encoding (:func:`unscale` undone)."""
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return (latents - mean) * cfg.scaling_factor / std
    shift = getattr(cfg, "shift_factor", None)
    if shift is not None:
        return (latents - shift) * cfg.scaling_factor
    return cfg.scaling_factor * latents


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(unscale(vae, latents), return_dict=False)[0]


#: VAEs whose pipelines undo the latent scaling otherwise (or decode other shapes), by class name
_DECODERS = {"AutoencoderKLQwenImage": family_qwenimage.decode}


class VaeDecode(Operator):
    name = "vae_decode"
    doc = "Unscale the latents, decode them with the VAE and denormalise to [0, 1]."
    component = "vae"
    concat_batch = True
    modes = {"default": Signature(inputs={"latents": Port("latent")}, outputs={"image": "image"})}

    def run(self, model, mode: str, items: list[Item]):
        # latents take the VAE's dtype first, as StableDiffusionXLPipeline does when it upcasts
        latents = torch.cat([it.inputs["latents"] for it in items]).to(model.dtype)
        with torch.inference_mode():
            image = _DECODERS.get(type(model).__name__, _decode)(model, latents)
        # denormalised in the VAE's dtype, then fp32 (exact), as the pipelines' numpy output
        image = image_processor.VaeImageProcessor(do_resize=False).postprocess(image, output_type="pt").float()
        sizes = [it.inputs["latents"].shape[0] for it in items]
        return [{"image": im} for im in torch.split(image, sizes)]

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"latents": examples.latents(cfg, size, device)}) for _ in range(batch)]
