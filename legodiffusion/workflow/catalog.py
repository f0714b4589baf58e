"""Built-in workflows."""

from __future__ import annotations

from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.spec import WorkflowSpec


def sd_txt2img(model: str = "sd15", name: str = "sd-txt2img", prompt_template: str | None = None) -> WorkflowSpec:
    """Stable Diffusion text-to-image with classifier-free guidance when ``guidance_scale > 1``.

    Each sampling step is two denoiser nodes (conditional and unconditional branch) and a light
    ``sampler_step`` node; without guidance it is one denoiser node.
    """
    wf = WorkflowBuilder(name, models={"base": model})
    prompt = wf.input("prompt", "text", doc="what to draw")
    negative = wf.input("negative_prompt", "text", default="", doc="what to steer away from")
    steps = wf.input("steps", "int", default=20, doc="sampling steps")
    guidance = wf.input("guidance_scale", "float", default=7.5, doc="classifier-free guidance; <= 1 disables it")
    seed = wf.input("seed", "int", default=0, doc="seeds torch.Generator('cpu') exactly as diffusers does")
    height = wf.input("height", "int", default=None, doc="pixels; model's native size when null")
    width = wf.input("width", "int", default=None, doc="pixels; model's native size when null")
    sampler = wf.input("sampler", "text", default="euler", doc="euler or ddim")

    text = prompt
    if prompt_template is not None:
        text = wf.call("format_text", template=prompt_template, text=prompt).text
    cond = wf.call("encode_prompt", model="base", text=text, id="encode_prompt")
    init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler=sampler, height=height, width=width)

    def guided():
        uncond = wf.call("encode_prompt", model="base", text=negative, id="encode_negative")

        def step(latents, state):
            c = wf.call("denoise", model="base", latents=latents, sampler=state, embedding=cond.embedding, id="unet_cond")
            u = wf.call("denoise", model="base", latents=latents, sampler=state, embedding=uncond.embedding, id="unet_uncond")
            s = wf.call(
                "sampler_step",
                mode="guided",
                latents=latents,
                sampler=state,
                noise_cond=c.noise,
                noise_uncond=u.noise,
                guidance_scale=guidance,
                id="step",
            )
            return s.latents, s.sampler

        loop = wf.denoise_loop(steps, init.latents, init.sampler, step, id="denoise")
        return {"latents": loop.latents}

    def unguided():
        def step(latents, state):
            c = wf.call("denoise", model="base", latents=latents, sampler=state, embedding=cond.embedding, id="unet")
            s = wf.call("sampler_step", mode="unguided", latents=latents, sampler=state, noise=c.noise, id="step_plain")
            return s.latents, s.sampler

        loop = wf.denoise_loop(steps, init.latents, init.sampler, step, id="denoise_plain")
        return {"latents": loop.latents}

    final = wf.cond(guidance > 1, guided, unguided, id="guidance")
    image = wf.call("vae_decode", model="base", latents=final.latents, id="decode")
    wf.output("image", image.image)
    return wf.build()


BUILTIN_WORKFLOWS = {"sd-txt2img": sd_txt2img}
