"""The ControlNet inputs of the text-to-image graphs.

SD and SDXL ControlNets read the control image's pixels, prepared once; SD3 ControlNets read its
VAE latents, one noise draw per guidance branch, as StableDiffusion3ControlNetPipeline encodes
them, and those without a patch embedding of their own (SD3.5-large's 8b ones) the base's, lent
once per request (:mod:`legodiffusion.ops.controlnet_sd3`); Flux ControlNets read its VAE latents
(:func:`flux_control_inputs`), with no guidance branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legodiffusion.workflow.builder import WorkflowBuilder

#: families whose ControlNets have a guess mode (ControlNetModel; SD3's pipeline has none)
GUESS_MODE_FAMILIES = frozenset({"sd", "sdxl"})


@dataclass(frozen=True)
class Control:
    """One ControlNet's inputs to its nodes: the control value each guidance branch reads, and its scale."""

    cond: Any
    uncond: Any
    scale: Any
    lent: dict = field(default_factory=dict)  # the base's values the ControlNet node reads too (SD3: its patch embedding)

    def for_branch(self, tag: str) -> Any:
        return self.uncond if tag == "_uncond" else self.cond


def _image_and_scale(wf: WorkflowBuilder, i: int):
    """ControlNet ``i``'s request inputs: ``control_image[_i]`` and ``control_scale[_i]``."""
    suffix = f"_{i}" if i else ""
    image = wf.input(f"control_image{suffix}", "image", doc=f"ControlNet {i}'s conditioning image")
    return image, wf.input(f"control_scale{suffix}", "float", default=1.0, doc=f"ControlNet {i}'s conditioning scale")


def control_inputs(wf: WorkflowBuilder, family: str, count: int, *, seed, guidance, latents, height, width) -> list[Control]:
    """``count`` ControlNets' request inputs (``control_image[_i]``, ``control_scale[_i]``) and the
    nodes that prepare their control values; ``latents``: the initial latents (their size is the
    generation size)."""
    controls, rng, lent = [], {}, {}
    if family == "sd3" and count:
        # one per request whatever the ControlNets: the spec is built without reading their configs
        lent = {"patch_embed": wf.call("sd3_patch_embedding", model="base", latents=latents, id="patch_embedding").patch_embed}
    for i in range(count):
        image, scale = _image_and_scale(wf, i)
        if family == "sd3":
            enc = wf.call(
                "encode_sd3_control",
                model="base",
                image=image,
                latents=latents,
                seed=seed,
                guidance_scale=guidance,
                id=f"control_image_{i}",
                **rng,
            )
            rng = {"rng": enc.rng}  # the next ControlNet's draw continues this one's generator, as the pipeline's global one
            controls.append(Control(enc.control, enc.control_uncond, scale, lent))
        else:
            prep = wf.call("prepare_control_image", model="base", image=image, height=height, width=width, id=f"control_image_{i}")
            controls.append(Control(prep.control, prep.control, scale))
    return controls


def flux_control_inputs(wf: WorkflowBuilder, count: int, *, seed, height, width) -> tuple[list[tuple[Any, Any]], dict]:
    """``count`` Flux ControlNets' request inputs and their VAE-encoded control values, as
    (control, scale) pairs, and the request generator's state after them (``{"rng": ...}``, or
    ``{}`` without ControlNets): FluxControlNetPipeline encodes the control images with the
    generator before the initial noise is drawn from it."""
    controls, rng = [], {}
    for i in range(count):
        image, scale = _image_and_scale(wf, i)
        enc = wf.call(
            "encode_control_image", model="base", image=image, seed=seed, height=height, width=width, id=f"control_image_{i}", **rng
        )
        rng = {"rng": enc.rng}
        controls.append((enc.control, scale))
    return controls, rng


def guess_mode_input(wf: WorkflowBuilder, family: str, count: int):
    """The ``guess_mode`` request input where the family's ControlNets have one, else None."""
    if not count or family not in GUESS_MODE_FAMILIES:
        return None
    return wf.input(
        "guess_mode",
        "bool",
        default=False,
        doc="ControlNet guess mode: the ControlNets steer only the conditional branch, their residuals scaled from 0.1 to 1",
    )
