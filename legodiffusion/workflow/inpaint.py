"""Inpainting: the start of each family's inpainting pipeline as graph nodes.

The request's generator is drawn from in the pipelines' order: the image encoded (except by a
9-channel UNet at strength 1, which starts from pure noise), the noise, then the masked image
encoded; a sampler that draws every step goes on from there (``sampler_rng``). A base denoiser
(4 or 16 latent channels) gets the kept region blended back after each step (``inpaint_blend``);
a 9-channel inpainting UNet reads the mask and the masked image's latents instead. With
``padding_mask_crop`` the region around the mask is generated and pasted back (``apply_overlay``).
"""

from __future__ import annotations

from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.starts import Start, StartFn, edit_inputs, loop_strength

#: family -> the default strength of its diffusers inpainting pipeline
STRENGTH = {"sd": 1.0, "sdxl": 0.9999, "sd3": 0.6, "flux": 0.6}


def inpaint_start(nine_channel: bool = False) -> StartFn:
    """The start function (see :mod:`legodiffusion.workflow.starts`) of an inpainting workflow;
    ``nine_channel`` for UNets that read the mask and masked image (SD and SDXL inpainting checkpoints)."""

    def start(wf: WorkflowBuilder, family: str, seed, steps, sampler, height, width) -> Start:
        if nine_channel and family not in ("sd", "sdxl"):
            raise ValueError(f"9-channel inpainting UNets are SD and SDXL models, not {family}")
        image, strength = edit_inputs(wf, STRENGTH[family])
        mask = wf.input("mask", "image", doc="where to repaint: white repaints, black keeps; the image's size")
        pad = wf.input("padding_mask_crop", "int", default=None, doc="generate only around the mask, grown by this many pixels (null: all)")
        size = {"height": height, "width": width, "padding_mask_crop": pad}
        prep = wf.call("prepare_mask", model="base", image=image, mask=mask, id="prepare_mask", **size)
        init_kw = {"model": "base", "mode": "inpaint", "mask": prep.mask, "steps": steps, "strength": strength, "sampler": sampler}

        def encoded():
            enc = wf.call("vae_encode", model="base", pixels=prep.pixels, seed=seed, id="encode_image")
            return enc, wf.call("init_latents", image_latents=enc.latents, rng=enc.rng, id="init_latents", **init_kw)

        if nine_channel:  # StableDiffusion(XL)InpaintPipeline encodes the image only to noise it (strength < 1)

            def noise_only():
                init = wf.call("init_latents", seed=seed, id="init_noise", **init_kw)
                return {"latents": init.latents, "sampler": init.sampler, "rng": init.rng}

            def noised():
                init = encoded()[1]
                return {"latents": init.latents, "sampler": init.sampler, "rng": init.rng}

            init = wf.cond(strength.eq(1.0), noise_only, noised, id="full_strength")
        else:
            enc, init = encoded()
        masked = wf.call("vae_encode", model="base", pixels=prep.masked_pixels, seed=seed, rng=init.rng, id="encode_masked")
        state = wf.call("sampler_rng", sampler=init.sampler, rng=masked.rng, id="sampler_rng").sampler

        def overlay(decoded):
            return wf.call("apply_overlay", model="base", image=decoded, original=image, mask=mask, id="overlay", **size).image

        if nine_channel:
            denoise = {"mode": "inpaint", "mask": prep.mask, "masked_latents": masked.latents}
            return Start(init.latents, state, loop_strength(family, strength), denoise=denoise, finish=overlay)

        def blend(latents, stepped, tag: str):
            return wf.call(
                "inpaint_blend",
                latents=latents,
                sampler=stepped,
                image_latents=enc.latents,
                noise=init.noise,
                mask=prep.mask,
                id="blend" + tag,
            ).latents

        return Start(init.latents, state, loop_strength(family, strength), after_step=blend, finish=overlay)

    return start
