"""Initial noise latents from a seed, and the sampler state that will travel with them."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from legodiffusion.ops import sampling
from legodiffusion.ops.base import Item, Operator, Port, Signature


class InitLatents(Operator):
    name = "init_latents"
    doc = (
        "Gaussian latents drawn exactly as the diffusers pipeline draws them "
        "(CPU generator seeded with `seed`), scaled by the sampler's initial sigma."
    )
    component = "config"
    light = True
    modes = {
        "default": Signature(
            inputs={
                "seed": Port("int", per_request=True),
                "steps": Port("int"),
                "sampler": Port("text"),
                "height": Port("int", optional=True, doc="pixels; the model's native size if null"),
                "width": Port("int", optional=True),
            },
            outputs={"latents": "latent", "sampler": "sampler"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            args = it.inputs
            height = args.get("height") or model.default_size
            width = args.get("width") or model.default_size
            factor = model.vae_scale_factor
            if height % factor or width % factor or height <= 0 or width <= 0:
                raise ValueError(f"height and width must be positive multiples of {factor}, got {height}x{width}")
            state = sampling.new_state(args["sampler"], model.scheduler_config, int(args["steps"]))
            shape = (1, model.latent_channels, height // factor, width // factor)
            generator = torch.Generator("cpu").manual_seed(int(args["seed"]))
            latents = randn_tensor(shape, generator=generator, dtype=torch.float32)
            out.append({"latents": latents * sampling.init_noise_sigma(state), "sampler": state})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"seed": i, "steps": 20, "sampler": "euler", "height": size, "width": size}) for i in range(batch)]
