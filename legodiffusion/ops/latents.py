"""Initial noise latents from a seed, and the sampler state that will travel with them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from legodiffusion.ops import examples, family_flux2, family_qwenimage, family_zimage, sampling
from legodiffusion.ops.base import SEED_PORT, STRENGTH_PORT, BadValue, Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
torch_utils = lazy_module("diffusers.utils.torch_utils")  # randn_tensor

#: families whose schedule setup has a module of its own: (cfg, steps, latent_h, latent_w) -> set_timesteps kwargs
_FAMILY_TIMESTEPS = {"qwenimage": family_qwenimage.timestep_kwargs, "zimage": family_zimage.timestep_kwargs}


def _timestep_kwargs(cfg, sampler: str, steps: int, latent_h: int, latent_w: int) -> dict:
    """What each pipeline passes to ``set_timesteps`` beyond the step count."""
    sc = cfg.scheduler_config
    if sampler not in sampling.FLOW_SAMPLERS:
        return {}
    if cfg.family in _FAMILY_TIMESTEPS:
        return _FAMILY_TIMESTEPS[cfg.family](cfg, steps, latent_h, latent_w)
    if cfg.family == "flux":
        seq_len = (latent_h // 2) * (latent_w // 2)
        kwargs = {"mu": sampling.image_shift(sc, seq_len)}
        if not sc.get("use_flow_sigmas"):
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps).tolist()
        return kwargs
    if cfg.family == "flux2":
        return family_flux2.timestep_kwargs(sc, steps, latent_h, latent_w)
    if sc.get("use_dynamic_shifting"):  # SD3.5 with dynamic shifting
        patch = cfg.patch_size
        seq_len = (latent_h // patch) * (latent_w // patch)
        return {"mu": sampling.image_shift(sc, seq_len, max_shift=1.16)}
    return {}


def _edit_state(model, sampler: str, steps: int, strength: float, latent_h: int, latent_w: int) -> sampling.SamplerState:
    """The sampler state of a ``steps``-step schedule positioned at the first step an edit of
    ``strength`` keeps (rounded as the family's pipelines round it)."""
    state = sampling.new_state(sampler, model.scheduler_config, steps, **_timestep_kwargs(model, sampler, steps, latent_h, latent_w))
    return replace(state, step_index=steps - sampling.kept_steps(steps, strength, sampling.STRENGTH_ROUNDS[model.family]))


def size_factor(family: str, vae_scale_factor: int) -> int:
    """What a pixel size must be a multiple of: the VAE's downscaling, twice that for Flux and
    Z-Image and Qwen-Image, whose pipelines ask for whole 2x2 latent patches."""
    return vae_scale_factor * (2 if family in (*sampling.PACKED_FAMILIES, "zimage") else 1)


def check_size(height: int | None, width: int | None, factor: int, family: str) -> None:
    """Raise :class:`BadValue` unless each size given is a positive multiple of ``factor`` (None:
    the model's native size)."""
    for port, pixels in (("height", height), ("width", width)):
        if pixels is not None and (pixels <= 0 or pixels % factor):
            raise BadValue(port, f"height and width must be positive multiples of {factor} for a {family} model, got {port} {pixels}")


def check_sampler(sampler: str, family: str | None) -> None:
    """:func:`sampling.check_sampler` as a :class:`BadValue` of the ``sampler`` port."""
    try:
        sampling.check_sampler(sampler, family)
    except ValueError as exc:
        raise BadValue("sampler", str(exc)) from None


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
                "seed": SEED_PORT,
                "steps": Port("int", ge=1),
                "sampler": Port("text"),
                "height": Port("int", optional=True, doc="pixels; the model's native size if null", ge=1),
                "width": Port("int", optional=True, ge=1),
                "rng": Port("rng", optional=True, doc="continue a generator an earlier node drew from (Flux ControlNet)"),
            },
            outputs={"latents": "latent", "sampler": "sampler"},
        ),
        "img2img": Signature(
            inputs={
                "image_latents": Port("latent", doc="the encoded input image (vae_encode), or latents a first stage made (hires)"),
                "rng": Port("rng", optional=True, doc="the request's generator after encoding the image"),
                "seed": Port(
                    "int",
                    optional=True,
                    per_request=True,
                    ge=0,
                    le=2**64 - 1,
                    doc="without `rng`: the noise comes from a generator seeded with this",
                ),
                "steps": Port("int", ge=1),
                "strength": STRENGTH_PORT,
                "sampler": Port("text"),
            },
            outputs={"latents": "latent", "sampler": "sampler", "noise": "noise", "rng": "rng"},
        ),
        "inpaint": Signature(
            inputs={
                "mask": Port("mask", doc="the latent-size mask (prepare_mask): the noise takes its size"),
                "image_latents": Port("latent", optional=True, doc="the encoded input image; needed unless strength is 1"),
                "rng": Port("rng", optional=True, doc="the request's generator after encoding the image"),
                "seed": Port("int", optional=True, per_request=True, ge=0, le=2**64 - 1, doc="without `rng`: seeds the generator"),
                "steps": Port("int", ge=1),
                "strength": STRENGTH_PORT,
                "sampler": Port("text"),
            },
            outputs={"latents": "latent", "sampler": "sampler", "noise": "noise", "rng": "rng"},
        ),
    }

    def check(self, mode, values, cfg):
        if "sampler" in values:
            check_sampler(values["sampler"], cfg.family if cfg is not None else None)
        if cfg is not None and mode == "default":
            check_size(values.get("height"), values.get("width"), size_factor(cfg.family, cfg.vae_scale_factor), cfg.family)
        if cfg is not None and mode in ("img2img", "inpaint") and cfg.family not in sampling.STRENGTH_ROUNDS:
            editing = sorted(sampling.STRENGTH_ROUNDS)
            raise BadValue("strength", f"a {cfg.family} model has no {mode} start here (text-to-image only); families that edit: {editing}")
        if cfg is not None and mode in ("img2img", "inpaint") and isinstance(values.get("steps"), int) and "strength" in values:
            kept = sampling.kept_steps(values["steps"], values["strength"], sampling.STRENGTH_ROUNDS[cfg.family])
            if kept < 1:
                raise BadValue("strength", f"strength {values['strength']} of {values['steps']} steps leaves no step to run")

    def run(self, model, mode: str, items: list[Item]):
        if mode == "img2img":
            return [self._noised(model, it) for it in items]
        if mode == "inpaint":
            return [self._inpaint_start(model, it) for it in items]
        out = []
        for it in items:
            args = it.inputs
            self.check(mode, args, model)
            height = model.default_size if args.get("height") is None else args["height"]
            width = model.default_size if args.get("width") is None else args["width"]
            sampler, steps = args["sampler"], int(args["steps"])
            h, w = height // model.vae_scale_factor, width // model.vae_scale_factor
            state = sampling.new_state(sampler, model.scheduler_config, steps, **_timestep_kwargs(model, sampler, steps, h, w))
            generator = sampling.request_generator(args)
            latents = torch_utils.randn_tensor((1, model.latent_channels, h, w), generator=generator, dtype=model.dtype)
            if model.family in ("sd", "sdxl"):
                latents = latents * sampling.init_noise_sigma(state)
            if sampler in sampling.STOCHASTIC:  # later steps keep drawing from this generator
                state = replace(state, rng=sampling.generator_state(generator))
            out.append({"latents": latents, "sampler": state})
        return out

    def _noised(self, model, it: Item) -> dict:
        """The image's latents noised to the first step an edit of this strength runs, with noise
        drawn from the generator that encoded them (or, for latents no encoder made, one seeded
        with ``seed``), as the family's img2img pipeline does."""
        args = it.inputs
        self.check("img2img", args, model)
        image_latents, sampler, steps = args["image_latents"], args["sampler"], int(args["steps"])
        h, w = image_latents.shape[-2:]
        state = _edit_state(model, sampler, steps, float(args["strength"]), h, w)
        if args.get("rng") is None and args.get("seed") is None:
            raise BadValue("rng", "img2img latents need the generator that encoded the image (rng) or a seed")
        generator = sampling.request_generator(args)  # a fresh one for latents no encoder drew for (a hires second stage)
        noise = torch_utils.randn_tensor(tuple(image_latents.shape), generator=generator, dtype=model.dtype)
        latents = sampling.add_noise(state, image_latents.to(model.dtype), noise)
        if sampler in sampling.STOCHASTIC:
            state = replace(state, rng=sampling.generator_state(generator))
        return {"latents": latents, "sampler": state, "noise": noise, "rng": generator.get_state()}

    def _inpaint_start(self, model, it: Item) -> dict:
        """The start of the family's inpainting pipeline: at strength 1 pure noise (times the
        sampler's initial sigma) for SD, SDXL and SD3, else, and always for Flux, the image's
        latents noised to the first step kept, as :meth:`_noised`."""
        args = it.inputs
        self.check("inpaint", args, model)
        sampler, steps, strength = args["sampler"], int(args["steps"]), float(args["strength"])
        h, w = args["mask"].shape[-2:]
        state = _edit_state(model, sampler, steps, strength, h, w)
        generator = sampling.request_generator(args)
        noise = torch_utils.randn_tensor((1, model.latent_channels, h, w), generator=generator, dtype=model.dtype)
        if strength == 1.0 and model.family != "flux":
            latents = noise * sampling.init_noise_sigma(state) if model.family in ("sd", "sdxl") else noise
        elif args.get("image_latents") is None:
            raise BadValue("image_latents", f"strength {strength} < 1 starts from the image: its latents are needed")
        else:
            latents = sampling.add_noise(state, args["image_latents"].to(model.dtype), noise)
        if sampler in sampling.STOCHASTIC:
            state = replace(state, rng=sampling.generator_state(generator))
        return {"latents": latents, "sampler": state, "noise": noise, "rng": generator.get_state()}

    def example_items(self, cfg, mode, batch, size, device):
        sampler = "flow_euler" if cfg.family in sampling.FLOW_FAMILIES else "euler"
        if mode == "inpaint":
            f = cfg.vae_scale_factor
            return [
                Item(
                    {
                        "mask": torch.ones(1, 1, size // f, size // f),
                        "image_latents": examples.latents(cfg, size, "cpu"),
                        "seed": i,
                        "steps": 20,
                        "strength": 0.6,
                        "sampler": sampler,
                    }
                )
                for i in range(batch)
            ]
        if mode == "img2img":
            g = torch.Generator("cpu")
            return [
                Item(
                    {
                        "image_latents": examples.latents(cfg, size, "cpu"),
                        "rng": g.manual_seed(i).get_state(),
                        "steps": 20,
                        "strength": 0.6,
                        "sampler": sampler,
                    }
                )
                for i in range(batch)
            ]
        return [Item({"seed": i, "steps": 20, "sampler": sampler, "height": size, "width": size}) for i in range(batch)]
