"""Built-in workflows: text-to-image, image-to-image, inpainting and two-stage hires (:mod:`.hires`)
for every family.

Each sampling step is one denoiser node per guidance branch plus a light ``sampler_step`` node;
with ``guidance_scale <= 1`` (and always for Flux, whose guidance is distilled into the model)
one denoiser node per step.
"""

from __future__ import annotations

from collections.abc import Callable

from legodiffusion.ops import step_cache
from legodiffusion.workflow.approx import adapter_inputs, approx_input, approx_save, approx_start
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.controls import control_inputs, guess_mode_input
from legodiffusion.workflow.flux2 import flux2_klein_txt2img
from legodiffusion.workflow.hires import flux_hires, flux_schnell_hires, sd3_hires, sd_hires, sdxl_hires
from legodiffusion.workflow.inpaint import inpaint_start
from legodiffusion.workflow.qwenimage import qwenimage_txt2img
from legodiffusion.workflow.spec import WorkflowSpec
from legodiffusion.workflow.starts import Start, StartFn, image_start
from legodiffusion.workflow.zimage import zimage_turbo_txt2img, zimage_txt2img

# family -> (default steps, default guidance, default negative prompt, default sampler)
_DEFAULTS = {
    "sd": (20, 7.5, "", "euler"),
    "sdxl": (30, 5.0, None, "euler"),
    "sd3": (28, 7.0, "", "flow_euler"),
}


def _lora_inputs(wf: WorkflowBuilder) -> dict:
    return {
        "loras": wf.input("loras", "text", default="", doc="LoRA patch set on the shared base model: NAME[:WEIGHT],..."),
        "lora_k": wf.input("lora_k", "int", default=0, doc="a LoRA still loading is applied from this step at the latest; 0 waits for it"),
    }


def _step_cache(wf: WorkflowBuilder, family: str, start: Start):
    """Transformer families: the request's step cache (off by default), its state started from the
    loop's first sampler state; None for the others."""
    if family not in step_cache.FAMILIES:
        return None
    spec = wf.input(
        "step_cache",
        "text",
        default=None,
        doc='skip most of the denoiser on steps whose input barely changed: JSON, {"kind": "first_block", "threshold": 0.05} '
        'or {"kind": "mag", "mag_ratios": [...] or "flux", "threshold": 0.06, ...} (diffusers\' FirstBlockCache and MagCache); null: off',
    )
    # a request without one carries no init node: the loop starts from a null cache
    on = wf.cond(
        spec.ne(None),
        lambda: {"cache": wf.call("init_step_cache", model="base", step_cache=spec, sampler=start.sampler, id="step_cache").cache},
        lambda: {"cache": None},
        id="step_cache_on",
    )
    return on.cache


#: A sampling stage after the first, for two-stage workflows (hires). Called once with the builder
#: and the request's input handles (``seed``, ``steps``, ``sampler``, ``height``, ``width``) to
#: declare its inputs, it returns ``then(loop, latents, tag)``: the final latents from the first
#: stage's, where ``loop(steps, latents, sampler, prefix, **loop_kw)`` runs a sampling loop as the
#: first stage's (same conditioning and guidance; node ids prefixed) and ``tag`` keeps the stage's
#: other node ids unique in each guidance branch.
Stage = Callable[[WorkflowBuilder, dict], Callable]


def _txt2img(
    family: str,
    model: str,
    name: str,
    prompt_template: str | None,
    controlnets: tuple[str, ...] = (),
    edit: StartFn | None = None,
    stage: Stage | None = None,
) -> WorkflowSpec:
    """A family's sampling graph; ``edit`` (a :class:`~legodiffusion.workflow.starts.Start` function)
    makes it an edit of an input image, ``stage`` adds a second sampling stage."""
    steps_d, guidance_d, negative_d, sampler_d = _DEFAULTS[family]
    if len(controlnets) > 3:
        raise ValueError("at most 3 ControlNets per workflow")
    if (edit or stage) and controlnets:
        raise ValueError("image-to-image and two-stage workflows take no ControlNets yet")
    if edit and stage:
        raise ValueError("a two-stage workflow starts from noise")
    wf = WorkflowBuilder(name, models={"base": model, **{f"cn{i}": cn for i, cn in enumerate(controlnets)}})
    prompt = wf.input("prompt", "text", doc="what to draw")
    negative = wf.input(
        "negative_prompt",
        "text",
        default=negative_d,
        doc="what to steer away from" + ("; null: zero embedding as SDXL does" if negative_d is None else ""),
    )
    steps = wf.input("steps", "int", default=steps_d, doc="sampling steps")
    guidance = wf.input("guidance_scale", "float", default=guidance_d, doc="classifier-free guidance, at most 100; <= 1 disables it")
    seed = wf.input("seed", "int", default=0, doc="0 <= seed < 2**64; seeds torch.Generator('cpu') exactly as diffusers does")
    height = wf.input("height", "int", default=None, doc="pixels, a multiple of the VAE factor (8); model's native size when null")
    width = wf.input("width", "int", default=None, doc="pixels, a multiple of the VAE factor (8); model's native size when null")
    sampler = wf.input(
        "sampler",
        "text",
        default=sampler_d,
        doc="euler, euler_karras, euler_ancestral, ddim, dpmpp_2m, dpmpp_2m_karras (UNet families); flow_euler (SD3 only)",
    )
    patch = _lora_inputs(wf)
    extra = dict(patch)
    if family == "sd3":
        extra["max_sequence_length"] = wf.input("max_sequence_length", "int", default=256, doc="T5 tokens")

    text = prompt
    if prompt_template is not None:
        text = wf.call("format_text", template=prompt_template, text=prompt).text
    cond = wf.call("encode_prompt", model="base", text=text, id="encode_prompt", **extra)
    then = stage(wf, {"seed": seed, "steps": steps, "sampler": sampler, "height": height, "width": width}) if stage else None
    if edit:
        start = edit(wf, family, seed, steps, sampler, height, width)
    else:
        init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler=sampler, height=height, width=width)
        start = Start(init.latents, init.sampler)
    controls = control_inputs(wf, family, len(controlnets), seed=seed, guidance=guidance, latents=start.latents, height=height, width=width)
    guess = guess_mode_input(wf, family, len(controlnets))
    approx = None if edit else approx_input(wf)  # starting from noise only: an edit starts from its image
    if approx is not None:
        adapters = adapter_inputs(patch, controlnets, [(c.cond, c.scale) for c in controls])
        start = approx_start(wf, approx, start, cond.embedding, adapters)
    cache = _step_cache(wf, family, start)  # (after a hit, the steps left are fewer)

    def stepped(latents, state, tag, prefix):
        """After a step: the first stage's latents offered to the approximate cache, then the edit's node."""
        if approx is not None and not prefix:
            approx_save(wf, approx, latents, state, cond.embedding, adapters, tag)
        return start.stepped(latents, state, tag)

    def branch(latents, state, embedding, tag, prefix, caches):
        """One guidance branch of one step: its ControlNets, then the base model reading them deferred."""
        patch_and_cache = patch if caches is None else {**patch, "cache": caches[f"cache{tag}"]}

        def plain(unet=f"{prefix}unet{tag}"):
            return wf.call(
                "denoise", model="base", latents=latents, sampler=state, embedding=embedding, id=unet, **start.denoise, **patch_and_cache
            )

        def controlled():
            residuals = {
                f"control_{i}": wf.call(
                    "controlnet",
                    model=f"cn{i}",
                    latents=latents,
                    sampler=state,
                    embedding=embedding,
                    control=c.for_branch(tag),
                    scale=c.scale,
                    id=f"{prefix}cn{i}{tag}",
                    **c.lent,
                    **({} if guess is None else {"guess_mode": guess}),
                ).residual
                for i, c in enumerate(controls)
            }
            return wf.call(
                "denoise",
                model="base",
                mode="controlnet",
                latents=latents,
                sampler=state,
                embedding=embedding,
                id=f"{prefix}unet{tag}",
                **residuals,
                **patch_and_cache,
            )

        if not controls:
            return plain()
        if guess is None or tag != "_uncond":
            return controlled()
        # guess mode: the unconditional branch reads no ControlNet (the pipelines add zero residuals to it)
        return wf.cond(
            guess.eq(True),
            lambda: {"noise": plain(f"{prefix}unet_guess{tag}").noise},
            lambda: {"noise": controlled().noise},
            id=f"{prefix}guess{tag}",
        )

    def stages(loop, tag: str, caches: dict | None) -> dict:
        """The first stage (with the request's step cache, each guidance branch its own) and any
        later one (without: a step cache is started per schedule)."""
        latents = loop(steps, start.latents, start.sampler, "", caches=caches, **start.loop)
        return {"latents": then(loop, latents, tag) if then else latents}

    def guided():
        uncond = wf.call("encode_prompt", model="base", text=negative, id="encode_negative", **extra)

        def loop(count, latents, state, prefix, caches=None, **kw):
            def step(latents, state, caches=None):
                c = branch(latents, state, cond.embedding, "_cond", prefix, caches)
                u = branch(latents, state, uncond.embedding, "_uncond", prefix, caches)
                s = wf.call(
                    "sampler_step",
                    mode="guided",
                    latents=latents,
                    sampler=state,
                    noise_cond=c.noise,
                    noise_uncond=u.noise,
                    guidance_scale=guidance,
                    id=prefix + "step",
                )
                nxt = stepped(s.latents, s.sampler, "", prefix)
                return (nxt, s.sampler) if caches is None else (nxt, s.sampler, {"cache_cond": c.cache, "cache_uncond": u.cache})

            return wf.denoise_loop(count, latents, state, step, id=prefix + "denoise", extra=caches, **kw).latents

        return stages(loop, "", None if cache is None else {"cache_cond": cache, "cache_uncond": cache})

    def unguided():
        def loop(count, latents, state, prefix, caches=None, **kw):
            def step(latents, state, caches=None):
                c = branch(latents, state, cond.embedding, "", prefix, caches)
                s = wf.call("sampler_step", mode="unguided", latents=latents, sampler=state, noise=c.noise, id=prefix + "step_plain")
                nxt = stepped(s.latents, s.sampler, "_plain", prefix)
                return (nxt, s.sampler) if caches is None else (nxt, s.sampler, {"cache": c.cache})

            return wf.denoise_loop(count, latents, state, step, id=prefix + "denoise_plain", extra=caches, **kw).latents

        return stages(loop, "_plain", None if cache is None else {"cache": cache})

    final = wf.cond(guidance > 1, guided, unguided, id="guidance")
    image = wf.call("vae_decode", model="base", latents=final.latents, id="decode")
    wf.output("image", start.finished(image.image))
    return wf.build()


def sd_txt2img(
    model: str = "sd15", name: str = "sd-txt2img", prompt_template: str | None = None, controlnets: tuple[str, ...] = ()
) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x text-to-image, optionally with up to 3 ControlNets (model names);
    each adds request inputs ``control_image[_i]`` and ``control_scale[_i]``; with any, ``guess_mode``
    (as SDXL's; see :mod:`.controls`)."""
    return _txt2img("sd", model, name, prompt_template, tuple(controlnets))


def sdxl_txt2img(
    model: str = "sdxl", name: str = "sdxl-txt2img", prompt_template: str | None = None, controlnets: tuple[str, ...] = ()
) -> WorkflowSpec:
    """SDXL text-to-image: two CLIP encoders, pooled and time-id conditioning; with ControlNets, as
    StableDiffusionXLControlNetPipeline (its ControlNets read the same added conditioning)."""
    return _txt2img("sdxl", model, name, prompt_template, tuple(controlnets))


def sd3_txt2img(
    model: str = "sd3", name: str = "sd3-txt2img", prompt_template: str | None = None, controlnets: tuple[str, ...] = ()
) -> WorkflowSpec:
    """SD3 / SD3.5 text-to-image: CLIP-L, CLIP-G and (optional) T5, flow matching; with ControlNets
    (``SD3ControlNetModel``), as StableDiffusion3ControlNetPipeline (:mod:`.controls`)."""
    return _txt2img("sd3", model, name, prompt_template, tuple(controlnets))


def sd_img2img(model: str = "sd15", name: str = "sd-img2img", prompt_template: str | None = None) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x image-to-image, as StableDiffusionImg2ImgPipeline: inputs ``image``
    and ``strength`` (default 0.8) besides text-to-image's."""
    return _txt2img("sd", model, name, prompt_template, edit=image_start)


def sdxl_img2img(model: str = "sdxl", name: str = "sdxl-img2img", prompt_template: str | None = None) -> WorkflowSpec:
    """SDXL image-to-image, as StableDiffusionXLImg2ImgPipeline (strength default 0.3)."""
    return _txt2img("sdxl", model, name, prompt_template, edit=image_start)


def sd3_img2img(model: str = "sd3", name: str = "sd3-img2img", prompt_template: str | None = None) -> WorkflowSpec:
    """SD3 / SD3.5 image-to-image, as StableDiffusion3Img2ImgPipeline (strength default 0.6)."""
    return _txt2img("sd3", model, name, prompt_template, edit=image_start)


def sd_inpaint(
    model: str = "sd15", name: str = "sd-inpaint", prompt_template: str | None = None, nine_channel: bool = False
) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x inpainting, as StableDiffusionInpaintPipeline: inputs ``image``,
    ``mask`` (white repaints), ``strength`` (default 1.0) and ``padding_mask_crop``; a base model
    blends the kept region back after each step, a ``nine_channel`` inpainting UNet reads the mask."""
    return _txt2img("sd", model, name, prompt_template, edit=inpaint_start(nine_channel))


def sdxl_inpaint(
    model: str = "sdxl", name: str = "sdxl-inpaint", prompt_template: str | None = None, nine_channel: bool = False
) -> WorkflowSpec:
    """SDXL inpainting, as StableDiffusionXLInpaintPipeline (strength default 0.9999)."""
    return _txt2img("sdxl", model, name, prompt_template, edit=inpaint_start(nine_channel))


def sd3_inpaint(model: str = "sd3", name: str = "sd3-inpaint", prompt_template: str | None = None) -> WorkflowSpec:
    """SD3 / SD3.5 inpainting, as StableDiffusion3InpaintPipeline (strength default 0.6)."""
    return _txt2img("sd3", model, name, prompt_template, edit=inpaint_start())


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
    if len(controlnets) > 3:
        raise ValueError("at most 3 ControlNets per workflow")
    if (edit or stage) and controlnets:
        raise ValueError("image-to-image and two-stage workflows take no ControlNets yet")
    if edit and stage:
        raise ValueError("a two-stage workflow starts from noise")
    wf = WorkflowBuilder(name, models={"base": model, **{f"cn{i}": cn for i, cn in enumerate(controlnets)}})
    prompt = wf.input("prompt", "text", doc="what to draw")
    steps = wf.input("steps", "int", default=4 if schnell else 28, doc="sampling steps")
    seed = wf.input("seed", "int", default=0, doc="0 <= seed < 2**64; seeds torch.Generator('cpu') exactly as diffusers does")
    height = wf.input("height", "int", default=None, doc="pixels, a multiple of twice the VAE factor (16); model's native size when null")
    width = wf.input("width", "int", default=None, doc="pixels, a multiple of twice the VAE factor (16); model's native size when null")
    max_seq = wf.input("max_sequence_length", "int", default=256 if schnell else 512, doc="T5 tokens")
    guidance = None if schnell else wf.input("guidance", "float", default=3.5, doc="distilled guidance scale (dev), 0 to 100")
    patch = _lora_inputs(wf)
    text = prompt
    if prompt_template is not None:
        text = wf.call("format_text", template=prompt_template, text=prompt).text
    cond = wf.call("encode_prompt", model="base", text=text, max_sequence_length=max_seq, id="encode_prompt", **patch)
    then = stage(wf, {"seed": seed, "steps": steps, "sampler": "flow_euler", "height": height, "width": width}) if stage else None
    controls, rng = [], {}
    for i in range(len(controlnets)):
        image = wf.input(f"control_image_{i}" if i else "control_image", "image", doc=f"ControlNet {i}'s conditioning image")
        scale = wf.input(f"control_scale_{i}" if i else "control_scale", "float", default=1.0, doc=f"ControlNet {i}'s conditioning scale")
        enc = wf.call(
            "encode_control_image", model="base", image=image, seed=seed, height=height, width=width, id=f"control_image_{i}", **rng
        )
        rng = {"rng": enc.rng}
        controls.append((enc.control, scale))
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
    cache = _step_cache(wf, "flux", start)  # (after a hit, the steps left are fewer)

    def loop(count, latents, state, prefix, caches=None, **kw):
        def step(latents, state, caches=None):
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
            mode = "controlnet" if controls else "default"
            c = wf.call(
                "denoise",
                model="base",
                mode=mode,
                latents=latents,
                sampler=state,
                embedding=cond.embedding,
                id=prefix + "transformer",
                **extra,
                **patch,
                **residuals,
                **({} if caches is None else {"cache": caches["cache"]}),
            )
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


BUILTIN_WORKFLOWS = {
    "sd-txt2img": sd_txt2img,
    "sdxl-txt2img": sdxl_txt2img,
    "sd3-txt2img": sd3_txt2img,
    "flux-txt2img": flux_txt2img,
    "flux-schnell-txt2img": flux_schnell_txt2img,
    "sd-img2img": sd_img2img,
    "sdxl-img2img": sdxl_img2img,
    "sd3-img2img": sd3_img2img,
    "flux-img2img": flux_img2img,
    "sd-inpaint": sd_inpaint,
    "sdxl-inpaint": sdxl_inpaint,
    "sd3-inpaint": sd3_inpaint,
    "flux-inpaint": flux_inpaint,
    "sd-hires": sd_hires,
    "sdxl-hires": sdxl_hires,
    "sd3-hires": sd3_hires,
    "flux-hires": flux_hires,
    "flux-schnell-hires": flux_schnell_hires,
    "flux2-klein-txt2img": flux2_klein_txt2img,
    "zimage-txt2img": zimage_txt2img,
    "zimage-turbo-txt2img": zimage_turbo_txt2img,
    "qwenimage-txt2img": qwenimage_txt2img,
}
