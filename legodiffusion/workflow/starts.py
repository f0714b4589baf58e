"""Where a family workflow's sampling loop starts, what an edit adds around its steps, and what
a second sampling stage is (:data:`Stage`).

Text-to-image starts from noise; an edit (image-to-image, inpainting) is a *start function*
``start(wf, family, seed, steps, sampler, height, width) -> Start`` that declares its own request
inputs and nodes and says how the family's sampling graph changes: the loop runs the steps its
strength keeps, each denoiser call may read more inputs, each step may be followed by a node, and
the decoded image may pass through one more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legodiffusion.ops import sampling
from legodiffusion.workflow.builder import Ref, WorkflowBuilder


@dataclass(frozen=True)
class Start:
    latents: Ref
    sampler: Ref
    #: keyword arguments of the sampling loop (an edit's ``strength`` and how it rounds)
    loop: dict = field(default_factory=dict)
    #: extra keyword arguments of every denoiser call (a mode and its inputs)
    denoise: dict = field(default_factory=dict)
    #: ``(latents, sampler, tag) -> latents`` after each sampler step; ``tag`` keeps node ids unique per branch
    after_step: Callable[[Ref, Ref, str], Ref] | None = None
    #: ``image -> image`` after decoding
    finish: Callable[[Ref], Ref] | None = None

    def stepped(self, latents: Ref, sampler: Ref, tag: str) -> Ref:
        return latents if self.after_step is None else self.after_step(latents, sampler, tag)

    def finished(self, image: Ref) -> Ref:
        return image if self.finish is None else self.finish(image)


StartFn = Callable[..., Start]

#: A sampling stage after the first, for two-stage workflows (:mod:`.hires`). Called once with the
#: builder and the request's input handles (``seed``, ``steps``, ``sampler``, ``height``, ``width``)
#: to declare its inputs, it returns ``then(loop, latents, tag)``: the final latents from the first
#: stage's, where ``loop(steps, latents, sampler, prefix, **loop_kw)`` runs a sampling loop as the
#: first stage's (same conditioning and guidance; node ids prefixed) and ``tag`` keeps the stage's
#: other node ids unique in each guidance branch.
Stage = Callable[[WorkflowBuilder, dict], Callable]


def edit_inputs(wf: WorkflowBuilder, strength: float) -> tuple[Any, Any]:
    """The request inputs every edit has: the ``image`` and the ``strength`` (default ``strength``)."""
    image = wf.input("image", "image", doc="the image to edit (its own size, rounded down to the size factor, unless height/width say)")
    fraction = wf.input("strength", "float", default=strength, doc="how much to change: the fraction of the steps run, 0 < strength <= 1")
    return image, fraction


def loop_strength(family: str, strength) -> dict:
    """The sampling loop's arguments for an edit at ``strength``, rounded as the family's pipelines."""
    return {"strength": strength, "strength_rounds": sampling.STRENGTH_ROUNDS[family]}


#: family -> the default strength of its diffusers image-to-image pipeline
IMG2IMG_STRENGTH = {"sd": 0.8, "sdxl": 0.3, "sd3": 0.6, "flux": 0.6}


def image_start(wf: WorkflowBuilder, family: str, seed, steps, sampler, height, width) -> Start:
    """An image-to-image start: the input image encoded with the request's generator, then noised
    to the first step its ``strength`` keeps."""
    image, strength = edit_inputs(wf, IMG2IMG_STRENGTH[family])
    pixels = wf.call("prepare_image", model="base", image=image, height=height, width=width, id="prepare_image").pixels
    enc = wf.call("vae_encode", model="base", pixels=pixels, seed=seed, id="encode_image")
    init = wf.call(
        "init_latents",
        model="base",
        mode="img2img",
        image_latents=enc.latents,
        rng=enc.rng,
        steps=steps,
        strength=strength,
        sampler=sampler,
    )
    return Start(init.latents, init.sampler, loop_strength(family, strength))
