"""Two-stage "hires" workflows: text-to-image at a low resolution, the latents upscaled, then
image-to-image at the target resolution with the same base model.

Both stages are ordinary nodes of one request, so each step of either stage batches with other
requests' nodes of the same shape (a second stage at 768x768 with other 768x768 steps). The
result equals the two diffusers calls it is made of::

    lat = TxtPipe(prompt, height=h, width=w, output_type="latent", generator=Generator().manual_seed(seed)).images
    lat = F.interpolate(lat, scale_factor=scale, mode=upscale_mode)   # Flux: unpacked first
    img = Img2ImgPipe.from_pipe(pipe)(prompt, image=lat, strength=strength, num_inference_steps=hires_steps,
                                      generator=Generator().manual_seed(hires_seed))

The second call gets a *fresh* generator seeded with ``hires_seed`` (by default the request's
seed), not the first call's generator continued: as in ComfyUI, where each KSampler seeds its own
noise, the second stage's noise depends on its seed alone, not on how many draws the first stage
made (an ancestral sampler draws every step). The img2img pipelines take latents as ``image``
when they have the VAE's latent channels: no encoding, no scaling, so nothing is drawn before the
noise.
"""

from __future__ import annotations

from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.flux import flux_txt2img
from legodiffusion.workflow.spec import WorkflowSpec
from legodiffusion.workflow.stable import stable_graph
from legodiffusion.workflow.starts import loop_strength

#: the second stage's defaults: upscale factor, strength, interpolation (ComfyUI's LatentUpscale default)
SCALE, STRENGTH, UPSCALE_MODE = 2.0, 0.5, "nearest-exact"


def hires_stage(family: str):
    """The second stage (a :data:`~legodiffusion.workflow.starts.Stage`): its inputs, then the
    upscale and the image-to-image loop from the first stage's latents."""

    def declare(wf: WorkflowBuilder, first: dict):
        scale = wf.input(
            "scale",
            "float",
            default=SCALE,
            doc="upscale factor of the second stage; height x scale and width x scale must be multiples of the size factor",
        )
        steps = wf.input("hires_steps", "int", default_from=first["steps"], doc="the second stage's schedule (null: steps)")
        strength = wf.input(
            "strength",
            "float",
            default=STRENGTH,
            doc="how much the second stage changes: the fraction of its schedule run, 0 < strength <= 1",
        )
        method = wf.input(
            "upscale_mode", "text", default=UPSCALE_MODE, doc="latent interpolation: nearest-exact, bilinear, bicubic, area, nearest"
        )
        seed = wf.input("hires_seed", "int", default_from=first["seed"], doc="seeds the second stage's noise (null: seed)")

        def then(loop, latents, tag: str):
            up = wf.call(
                "upscale_latents",
                model="base",
                latents=latents,
                scale=scale,
                method=method,
                height=first["height"],
                width=first["width"],
                id="upscale" + tag,
            )
            init = wf.call(
                "init_latents",
                model="base",
                mode="img2img",
                image_latents=up.latents,
                seed=seed,
                steps=steps,
                strength=strength,
                sampler=first["sampler"],
                id="init_hires" + tag,
            )
            return loop(steps, init.latents, init.sampler, "hires_", **loop_strength(family, strength))

        return then

    return declare


def sd_hires(model: str = "sd15", name: str = "sd-hires", prompt_template: str | None = None) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x hires: StableDiffusionPipeline, then StableDiffusionImg2ImgPipeline
    on the upscaled latents."""
    return stable_graph("sd", model, name, prompt_template, stage=hires_stage("sd"))


def sdxl_hires(model: str = "sdxl", name: str = "sdxl-hires", prompt_template: str | None = None) -> WorkflowSpec:
    """SDXL hires: StableDiffusionXLPipeline, then StableDiffusionXLImg2ImgPipeline."""
    return stable_graph("sdxl", model, name, prompt_template, stage=hires_stage("sdxl"))


def sd3_hires(model: str = "sd3", name: str = "sd3-hires", prompt_template: str | None = None) -> WorkflowSpec:
    """SD3 / SD3.5 hires: StableDiffusion3Pipeline, then StableDiffusion3Img2ImgPipeline."""
    return stable_graph("sd3", model, name, prompt_template, stage=hires_stage("sd3"))


def flux_hires(model: str = "flux", name: str = "flux-hires", prompt_template: str | None = None, schnell: bool = False) -> WorkflowSpec:
    """Flux hires: FluxPipeline, then FluxImg2ImgPipeline on the unpacked, upscaled latents."""
    return flux_txt2img(model, name, prompt_template, schnell=schnell, stage=hires_stage("flux"))


def flux_schnell_hires(model: str = "flux-schnell", name: str = "flux-schnell-hires", prompt_template: str | None = None) -> WorkflowSpec:
    return flux_hires(model, name, prompt_template, schnell=True)
