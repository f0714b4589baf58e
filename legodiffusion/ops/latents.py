"""Initial noise latents from a seed, and the sampler state that will travel with them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from legodiffusion.ops import sampling
from legodiffusion.ops.base import Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
pipeline_flux = lazy_module("diffusers.pipelines.flux.pipeline_flux")  # calculate_shift
torch_utils = lazy_module("diffusers.utils.torch_utils")  # randn_tensor


def _timestep_kwargs(cfg, sampler: str, steps: int, latent_h: int, latent_w: int) -> dict:
    """What each pipeline passes to ``set_timesteps`` beyond the step count."""
    sc = cfg.scheduler_config
    if sampler not in sampling.FLOW_SAMPLERS:
        return {}
    if cfg.family == "flux":
        seq_len = (latent_h // 2) * (latent_w // 2)
        mu = pipeline_flux.calculate_shift(
            seq_len,
            sc.get("base_image_seq_len", 256),
            sc.get("max_image_seq_len", 4096),
            sc.get("base_shift", 0.5),
            sc.get("max_shift", 1.15),
        )
        kwargs = {"mu": mu}
        if not sc.get("use_flow_sigmas"):
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps).tolist()
        return kwargs
    if sc.get("use_dynamic_shifting"):  # SD3.5 with dynamic shifting
        patch = cfg.patch_size
        seq_len = (latent_h // patch) * (latent_w // patch)
        return {
            "mu": pipeline_flux.calculate_shift(
                seq_len,
                sc.get("base_image_seq_len", 256),
                sc.get("max_image_seq_len", 4096),
                sc.get("base_shift", 0.5),
                sc.get("max_shift", 1.16),
            )
        }
    return {}


class InitLatents(Operator):
    name = "init_latents"
    doc = (
        "Gaussian latents drawn exactly as the family's diffusers pipeline draws them (CPU generator "
        "seeded with `seed`, in the denoiser's dtype), scaled by the sampler's initial sigma. Flux latents stay unpacked here; "
        "the denoiser packs them (a permutation, so values are unchanged)."
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
                "rng": Port("rng", optional=True, doc="continue a generator an earlier node drew from (Flux ControlNet)"),
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
            factor = model.vae_scale_factor * (2 if model.family == "flux" else 1)
            if height % factor or width % factor or height <= 0 or width <= 0:
                raise ValueError(f"height and width must be positive multiples of {factor}, got {height}x{width}")
            sampler, steps = args["sampler"], int(args["steps"])
            sampling.check_sampler(sampler)
            if (sampler in sampling.FLOW_SAMPLERS) != (model.family in ("sd3", "flux")):
                raise ValueError(f"sampler {sampler!r} does not fit a {model.family} model")
            h, w = height // model.vae_scale_factor, width // model.vae_scale_factor
            state = sampling.new_state(sampler, model.scheduler_config, steps, **_timestep_kwargs(model, sampler, steps, h, w))
            generator = torch.Generator("cpu")
            if args.get("rng") is not None:
                generator.set_state(args["rng"])
            else:
                generator.manual_seed(int(args["seed"]))
            latents = torch_utils.randn_tensor((1, model.latent_channels, h, w), generator=generator, dtype=model.dtype)
            if model.family in ("sd", "sdxl"):
                latents = latents * sampling.init_noise_sigma(state)
            if sampler in sampling.STOCHASTIC:  # later steps keep drawing from this generator
                state = replace(state, rng=sampling.generator_state(generator))
            out.append({"latents": latents, "sampler": state})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        sampler = "flow_euler" if cfg.family in ("sd3", "flux") else "euler"
        return [Item({"seed": i, "steps": 20, "sampler": sampler, "height": size, "width": size}) for i in range(batch)]
