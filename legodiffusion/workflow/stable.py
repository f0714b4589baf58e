"""Stable Diffusion 1.x/2.x, SDXL and SD3 / SD3.5 workflows: text-to-image (with up to 3
ControlNets), image-to-image and inpainting share one sampling graph per family.

Each sampling step is one denoiser node per guidance branch plus a light ``sampler_step`` node;
with ``guidance_scale <= 1``, one denoiser node per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from legodiffusion.workflow.approx import adapter_inputs, approx_input, approx_save, approx_start
from legodiffusion.workflow.builder import InputHandle, Ref, WorkflowBuilder
from legodiffusion.workflow.controls import Control, control_inputs, guess_mode_input
from legodiffusion.workflow.inpaint import inpaint_start
from legodiffusion.workflow.inputs import begin, check_variant, lora_inputs, prompt_text, seed_input, size_inputs
from legodiffusion.workflow.spec import WorkflowSpec
from legodiffusion.workflow.starts import Stage, Start, StartFn, image_start
from legodiffusion.workflow.step_cache import step_cache_start

# family -> (default steps, default guidance, default negative prompt, default sampler)
_DEFAULTS = {
    "sd": (20, 7.5, "", "euler"),
    "sdxl": (30, 5.0, None, "euler"),
    "sd3": (28, 7.0, "", "flow_euler"),
}


def stable_graph(
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
    check_variant(controlnets, edit is not None, stage is not None)
    steps_d, guidance_d, negative_d, sampler_d = _DEFAULTS[family]
    wf, prompt = begin(name, model, controlnets)
    negative = wf.input(
        "negative_prompt",
        "text",
        default=negative_d,
        doc="what to steer away from" + ("; null: zero embedding as SDXL does" if negative_d is None else ""),
    )
    steps = wf.input("steps", "int", default=steps_d, doc="sampling steps")
    guidance = wf.input("guidance_scale", "float", default=guidance_d, doc="classifier-free guidance, at most 100; <= 1 disables it")
    seed = seed_input(wf)
    height, width = size_inputs(wf, "a multiple of the VAE factor (8); model's native size when null")
    sampler = wf.input(
        "sampler",
        "text",
        default=sampler_d,
        doc="euler, euler_karras, euler_ancestral, ddim, dpmpp_2m, dpmpp_2m_karras (UNet families); flow_euler (SD3 only)",
    )
    patch = lora_inputs(wf)
    encoder = dict(patch)
    if family == "sd3":
        encoder["max_sequence_length"] = wf.input("max_sequence_length", "int", default=256, doc="T5 tokens")

    cond = wf.call("encode_prompt", model="base", text=prompt_text(wf, prompt, prompt_template), id="encode_prompt", **encoder)
    then = stage(wf, {"seed": seed, "steps": steps, "sampler": sampler, "height": height, "width": width}) if stage else None
    if edit:
        start = edit(wf, family, seed, steps, sampler, height, width)
    else:
        init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler=sampler, height=height, width=width)
        start = Start(init.latents, init.sampler)
    controls = control_inputs(wf, family, len(controlnets), seed=seed, guidance=guidance, latents=start.latents, height=height, width=width)
    guess = guess_mode_input(wf, family, len(controlnets))
    approx, adapters = None if edit else approx_input(wf), {}  # starting from noise only: an edit starts from its image
    if approx is not None:
        adapters = adapter_inputs(patch, controlnets, [(c.cond, c.scale) for c in controls])
        start = approx_start(wf, approx, start, cond.embedding, adapters)
    cache = step_cache_start(wf, family, start)  # (after a hit, the steps left are fewer)
    graph = _Sampling(wf, cond.embedding, patch, start, controls, guess, approx, adapters, steps, then)

    def guided():
        uncond = wf.call("encode_prompt", model="base", text=negative, id="encode_negative", **encoder)
        return graph.guided(uncond.embedding, guidance, None if cache is None else {"cache_cond": cache, "cache_uncond": cache})

    final = wf.cond(guidance > 1, guided, lambda: graph.unguided(None if cache is None else {"cache": cache}), id="guidance")
    image = wf.call("vae_decode", model="base", latents=final.latents, id="decode")
    wf.output("image", start.finished(image.image))
    return wf.build()


@dataclass(frozen=True)
class _Sampling:
    """The sampling loops of one graph, guided or not, with what every step reads."""

    wf: WorkflowBuilder
    embedding: Ref  # the prompt's
    patch: dict  # the LoRA inputs every denoiser node reads
    start: Start
    controls: list[Control]
    guess: InputHandle | None  # the guess_mode input, where the ControlNets have one
    approx: InputHandle | None  # the approx_cache input, where the graph has the cache
    adapters: dict  # what of the adapters the approximate cache keys on
    steps: InputHandle
    then: object  # the second stage's ``then`` (a :data:`Stage`'s result), or None

    def guided(self, uncond: Ref, guidance: InputHandle, caches: dict | None) -> dict:
        def loop(count, latents, state, prefix, caches=None, **kw):
            def step(latents, state, caches=None):
                c = self.branch(latents, state, self.embedding, "_cond", prefix, caches)
                u = self.branch(latents, state, uncond, "_uncond", prefix, caches)
                s = self.wf.call(
                    "sampler_step",
                    mode="guided",
                    latents=latents,
                    sampler=state,
                    noise_cond=c.noise,
                    noise_uncond=u.noise,
                    guidance_scale=guidance,
                    id=prefix + "step",
                )
                nxt = self.stepped(s.latents, s.sampler, "", prefix)
                return (nxt, s.sampler) if caches is None else (nxt, s.sampler, {"cache_cond": c.cache, "cache_uncond": u.cache})

            return self.wf.denoise_loop(count, latents, state, step, id=prefix + "denoise", extra=caches, **kw).latents

        return self.stages(loop, "", caches)

    def unguided(self, caches: dict | None) -> dict:
        def loop(count, latents, state, prefix, caches=None, **kw):
            def step(latents, state, caches=None):
                c = self.branch(latents, state, self.embedding, "", prefix, caches)
                s = self.wf.call("sampler_step", mode="unguided", latents=latents, sampler=state, noise=c.noise, id=prefix + "step_plain")
                nxt = self.stepped(s.latents, s.sampler, "_plain", prefix)
                return (nxt, s.sampler) if caches is None else (nxt, s.sampler, {"cache": c.cache})

            return self.wf.denoise_loop(count, latents, state, step, id=prefix + "denoise_plain", extra=caches, **kw).latents

        return self.stages(loop, "_plain", caches)

    def stages(self, loop, tag: str, caches: dict | None) -> dict:
        """The first stage (with the request's step cache, each guidance branch its own) and any
        later one (without: a step cache is started per schedule)."""
        latents = loop(self.steps, self.start.latents, self.start.sampler, "", caches=caches, **self.start.loop)
        return {"latents": self.then(loop, latents, tag) if self.then else latents}

    def stepped(self, latents, state, tag: str, prefix: str):
        """After a step: the first stage's latents offered to the approximate cache, then the edit's node."""
        if self.approx is not None and not prefix:
            approx_save(self.wf, self.approx, latents, state, self.embedding, self.adapters, tag)
        return self.start.stepped(latents, state, tag)

    def branch(self, latents, state, embedding, tag: str, prefix: str, caches: dict | None):
        """One guidance branch of one step: its ControlNets, then the base model reading them deferred."""
        patch = self.patch if caches is None else {**self.patch, "cache": caches[f"cache{tag}"]}
        if not self.controls:
            return self._denoise(latents, state, embedding, f"{prefix}unet{tag}", patch)
        if self.guess is None or tag != "_uncond":
            return self._controlled(latents, state, embedding, tag, prefix, patch)
        # guess mode: the unconditional branch reads no ControlNet (the pipelines add zero residuals to it)
        return self.wf.cond(
            self.guess.eq(True),
            lambda: {"noise": self._denoise(latents, state, embedding, f"{prefix}unet_guess{tag}", patch).noise},
            lambda: {"noise": self._controlled(latents, state, embedding, tag, prefix, patch).noise},
            id=f"{prefix}guess{tag}",
        )

    def _denoise(self, latents, state, embedding, id: str, patch: dict):
        return self.wf.call(
            "denoise", model="base", latents=latents, sampler=state, embedding=embedding, id=id, **self.start.denoise, **patch
        )

    def _controlled(self, latents, state, embedding, tag: str, prefix: str, patch: dict):
        guess = {} if self.guess is None else {"guess_mode": self.guess}
        residuals = {
            f"control_{i}": self.wf.call(
                "controlnet",
                model=f"cn{i}",
                latents=latents,
                sampler=state,
                embedding=embedding,
                control=c.for_branch(tag),
                scale=c.scale,
                id=f"{prefix}cn{i}{tag}",
                **c.lent,
                **guess,
            ).residual
            for i, c in enumerate(self.controls)
        }
        return self.wf.call(
            "denoise",
            model="base",
            mode="controlnet",
            latents=latents,
            sampler=state,
            embedding=embedding,
            id=f"{prefix}unet{tag}",
            **residuals,
            **patch,
        )


def sd_txt2img(
    model: str = "sd15", name: str = "sd-txt2img", prompt_template: str | None = None, controlnets: tuple[str, ...] = ()
) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x text-to-image, optionally with up to 3 ControlNets (model names);
    each adds request inputs ``control_image[_i]`` and ``control_scale[_i]``; with any, ``guess_mode``
    (as SDXL's; see :mod:`.controls`)."""
    return stable_graph("sd", model, name, prompt_template, tuple(controlnets))


def sdxl_txt2img(
    model: str = "sdxl", name: str = "sdxl-txt2img", prompt_template: str | None = None, controlnets: tuple[str, ...] = ()
) -> WorkflowSpec:
    """SDXL text-to-image: two CLIP encoders, pooled and time-id conditioning; with ControlNets, as
    StableDiffusionXLControlNetPipeline (its ControlNets read the same added conditioning)."""
    return stable_graph("sdxl", model, name, prompt_template, tuple(controlnets))


def sd3_txt2img(
    model: str = "sd3", name: str = "sd3-txt2img", prompt_template: str | None = None, controlnets: tuple[str, ...] = ()
) -> WorkflowSpec:
    """SD3 / SD3.5 text-to-image: CLIP-L, CLIP-G and (optional) T5, flow matching; with ControlNets
    (``SD3ControlNetModel``), as StableDiffusion3ControlNetPipeline (:mod:`.controls`)."""
    return stable_graph("sd3", model, name, prompt_template, tuple(controlnets))


def sd_img2img(model: str = "sd15", name: str = "sd-img2img", prompt_template: str | None = None) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x image-to-image, as StableDiffusionImg2ImgPipeline: inputs ``image``
    and ``strength`` (default 0.8) besides text-to-image's."""
    return stable_graph("sd", model, name, prompt_template, edit=image_start)


def sdxl_img2img(model: str = "sdxl", name: str = "sdxl-img2img", prompt_template: str | None = None) -> WorkflowSpec:
    """SDXL image-to-image, as StableDiffusionXLImg2ImgPipeline (strength default 0.3)."""
    return stable_graph("sdxl", model, name, prompt_template, edit=image_start)


def sd3_img2img(model: str = "sd3", name: str = "sd3-img2img", prompt_template: str | None = None) -> WorkflowSpec:
    """SD3 / SD3.5 image-to-image, as StableDiffusion3Img2ImgPipeline (strength default 0.6)."""
    return stable_graph("sd3", model, name, prompt_template, edit=image_start)


def sd_inpaint(
    model: str = "sd15", name: str = "sd-inpaint", prompt_template: str | None = None, nine_channel: bool = False
) -> WorkflowSpec:
    """Stable Diffusion 1.x/2.x inpainting, as StableDiffusionInpaintPipeline: inputs ``image``,
    ``mask`` (white repaints), ``strength`` (default 1.0) and ``padding_mask_crop``; a base model
    blends the kept region back after each step, a ``nine_channel`` inpainting UNet reads the mask."""
    return stable_graph("sd", model, name, prompt_template, edit=inpaint_start(nine_channel))


def sdxl_inpaint(
    model: str = "sdxl", name: str = "sdxl-inpaint", prompt_template: str | None = None, nine_channel: bool = False
) -> WorkflowSpec:
    """SDXL inpainting, as StableDiffusionXLInpaintPipeline (strength default 0.9999)."""
    return stable_graph("sdxl", model, name, prompt_template, edit=inpaint_start(nine_channel))


def sd3_inpaint(model: str = "sd3", name: str = "sd3-inpaint", prompt_template: str | None = None) -> WorkflowSpec:
    """SD3 / SD3.5 inpainting, as StableDiffusion3InpaintPipeline (strength default 0.6)."""
    return stable_graph("sd3", model, name, prompt_template, edit=inpaint_start())


#: family -> its built-in workflow of each kind (what a server builds per model folder)
TXT2IMG = {"sd": sd_txt2img, "sdxl": sdxl_txt2img, "sd3": sd3_txt2img}
IMG2IMG = {"sd": sd_img2img, "sdxl": sdxl_img2img, "sd3": sd3_img2img}
INPAINT = {"sd": sd_inpaint, "sdxl": sdxl_inpaint, "sd3": sd3_inpaint}
