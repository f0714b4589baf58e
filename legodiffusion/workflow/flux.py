"""FLUX.1 workflows (dev and schnell): text-to-image (with up to 3 ControlNets), image-to-image and
inpainting share one sampling graph: one transformer node and one ``sampler_step`` node per step,
no classifier-free guidance (dev's is distilled into the model)."""

from __future__ import annotations

from legodiffusion.workflow.approx import adapter_inputs, approx_input, approx_save, approx_start
from legodiffusion.workflow.controls import flux_control_inputs
from legodiffusion.workflow.inpaint import inpaint_start
from legodiffusion.workflow.inputs import begin, check_variant, lora_inputs, prompt_text, seed_input, size_inputs
from legodiffusion.workflow.spec import WorkflowSpec
from legodiffusion.workflow.starts import Stage, Start, StartFn, image_start
from legodiffusion.workflow.step_cache import step_cache_start


def flux_txt2img(
    model: str = "flux",
    name: str = "flux-txt2img",
    prompt_template: str | None = None,
    schnell: bool = False,
    controlnets: tuple[str, ...] = (),
    edit: StartFn | None = None,
    stage: Stage | None = None,
) -> WorkflowSpec:
    """Flux text-to-image: CLIP pooled + T5, packed latents, no classifier-free guidance.

    dev: a distilled ``guidance`` embedding (default 3.5), 28 steps; schnell: 4 steps, no guidance.
    With Flux ControlNets (model names), each adds ``control_image[_i]`` and ``control_scale[_i]``;
    their control images are VAE-encoded with the request's generator before the initial noise is
    drawn from it, as FluxControlNetPipeline does."""
    check_variant(controlnets, edit is not None, stage is not None)
    wf, prompt = begin(name, model, controlnets)
    steps = wf.input("steps", "int", default=4 if schnell else 28, doc="sampling steps")
    seed = seed_input(wf)
    height, width = size_inputs(wf, "a multiple of twice the VAE factor (16); model's native size when null")
    max_seq = wf.input("max_sequence_length", "int", default=256 if schnell else 512, doc="T5 tokens")
    guidance = None if schnell else wf.input("guidance", "float", default=3.5, doc="distilled guidance scale (dev), 0 to 100")
    patch = lora_inputs(wf)
    text = prompt_text(wf, prompt, prompt_template)
    cond = wf.call("encode_prompt", model="base", text=text, max_sequence_length=max_seq, id="encode_prompt", **patch)
    then = stage(wf, {"seed": seed, "steps": steps, "sampler": "flow_euler", "height": height, "width": width}) if stage else None
    controls, rng = flux_control_inputs(wf, len(controlnets), seed=seed, height=height, width=width)
    if edit:
        start = edit(wf, "flux", seed, steps, "flow_euler", height, width)
        if start.denoise:
            raise ValueError("Flux denoisers read no inputs beside the latents here")
    else:
        init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler="flow_euler", height=height, width=width, **rng)
        start = Start(init.latents, init.sampler)
    extra = {} if guidance is None else {"guidance": guidance}
    approx = None if edit else approx_input(wf)  # starting from noise only: an edit starts from its image
    if approx is not None:
        adapters = adapter_inputs(patch, controlnets, controls)
        start = approx_start(wf, approx, start, cond.embedding, adapters)
    cache = step_cache_start(wf, "flux", start)  # (after a hit, the steps left are fewer)

    def transformer(latents, state, prefix, caches):
        """One step's ControlNets, then the transformer reading them deferred."""
        residuals = {
            f"control_{i}": wf.call(
                "controlnet",
                model=f"cn{i}",
                latents=latents,
                sampler=state,
                embedding=cond.embedding,
                control=c,
                scale=sc,
                id=f"{prefix}cn{i}",
                **extra,
            ).residual
            for i, (c, sc) in enumerate(controls)
        }
        return wf.call(
            "denoise",
            model="base",
            mode="controlnet" if controls else "default",
            latents=latents,
            sampler=state,
            embedding=cond.embedding,
            id=prefix + "transformer",
            **extra,
            **patch,
            **residuals,
            **({} if caches is None else {"cache": caches["cache"]}),
        )

    def loop(count, latents, state, prefix, caches=None, **kw):
        def step(latents, state, caches=None):
            c = transformer(latents, state, prefix, caches)
            s = wf.call("sampler_step", mode="unguided", latents=latents, sampler=state, noise=c.noise, id=prefix + "step")
            if approx is not None and not prefix:  # the first stage's latents offered to the approximate cache
                approx_save(wf, approx, s.latents, s.sampler, cond.embedding, adapters, "")
            nxt = start.stepped(s.latents, s.sampler, "")
            return (nxt, s.sampler) if caches is None else (nxt, s.sampler, {"cache": c.cache})

        return wf.denoise_loop(count, latents, state, step, id=prefix + "denoise", extra=caches, **kw).latents

    latents = loop(steps, start.latents, start.sampler, "", caches={"cache": cache}, **start.loop)
    if then:
        latents = then(loop, latents, "")
    wf.output("image", start.finished(wf.call("vae_decode", model="base", latents=latents, id="decode").image))
    return wf.build()


def flux_schnell_txt2img(
    model: str = "flux-schnell", name: str = "flux-schnell-txt2img", prompt_template: str | None = None
) -> WorkflowSpec:
    return flux_txt2img(model, name, prompt_template, schnell=True)


def flux_img2img(
    model: str = "flux", name: str = "flux-img2img", prompt_template: str | None = None, schnell: bool = False
) -> WorkflowSpec:
    """Flux image-to-image, as FluxImg2ImgPipeline: inputs ``image`` and ``strength`` (default 0.6)."""
    return flux_txt2img(model, name, prompt_template, schnell=schnell, edit=image_start)


def flux_inpaint(
    model: str = "flux", name: str = "flux-inpaint", prompt_template: str | None = None, schnell: bool = False
) -> WorkflowSpec:
    """Flux inpainting, as FluxInpaintPipeline (strength default 0.6)."""
    return flux_txt2img(model, name, prompt_template, schnell=schnell, edit=inpaint_start())
