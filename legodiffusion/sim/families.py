"""Simulated workflows of the Qwen-read families: FLUX.2-klein, Z-Image(-Turbo) and Qwen-Image.

The simulator prices a node by its operator, mode and model, so a family's simulated workflow is
its live built-in workflow (:mod:`legodiffusion.workflow.flux2`, ``.zimage``, ``.qwenimage``) bound
to the reference model's name: FLUX.2-klein as a step-distilled checkpoint (one transformer call per
step); Z-Image-Turbo with guidance 0 (one call per step); Z-Image with CFG (two calls per step, one
node per guidance branch); Qwen-Image with a negative prompt and ``true_cfg_scale`` (two calls per
step, combined by ``sampler_step`` mode ``true_cfg``).

Default steps and guidance are the model cards' (``step-counts`` in ``sim/data/h100.json``; Z-Image:
diffusers 0.42.1's ZImagePipeline defaults).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from legodiffusion.workflow.flux2 import flux2_klein_txt2img
from legodiffusion.workflow.qwenimage import qwenimage_txt2img
from legodiffusion.workflow.spec import WorkflowSpec
from legodiffusion.workflow.zimage import zimage_txt2img


class FamilyModel(NamedTuple):
    family: str
    guided: bool  # two denoiser calls per step (CFG), else one
    steps: int
    guidance: float | None  # the CFG scale of a guided model


MODELS = {
    "flux2-klein-4b": FamilyModel("flux2", False, 4, None),
    "flux2-klein-9b": FamilyModel("flux2", False, 4, None),
    "z-image-turbo": FamilyModel("zimage", False, 9, None),
    "z-image": FamilyModel("zimage", True, 50, 5.0),
    "qwen-image": FamilyModel("qwenimage", True, 50, 4.0),
}
#: what a guided request binds beside its scale: Qwen-Image runs true CFG only with a negative prompt
_NEGATIVE = {"negative_prompt": "blurry, low quality"}


def txt2img(model: str, name: str, steps: int | None = None, guidance: float | None = None) -> tuple[WorkflowSpec, dict[str, Any]]:
    """The simulated text-to-image workflow of ``model`` and the inputs it binds: ``steps`` (default
    the model card's) and, for a guided model, its guidance scale (default the model card's)."""
    try:
        m = MODELS[model]
    except KeyError:
        raise KeyError(f"model {model!r} has no simulated family workflow; known: {', '.join(MODELS)}") from None
    inputs: dict[str, Any] = {"steps": m.steps if steps is None else steps}
    if not m.guided:
        if guidance is not None:
            raise ValueError(f"guidance: {model} is guidance-distilled and takes none, got {guidance}")
        if m.family == "flux2":
            return flux2_klein_txt2img(model, name=name, distilled=True), inputs
        return zimage_txt2img(model, name=name), {**inputs, "guidance_scale": 0.0}
    scale = m.guidance if guidance is None else guidance
    if scale <= 1:
        raise ValueError(f"guidance: {model} runs CFG in this workload, so its scale must be above 1, got {scale}")
    if m.family == "qwenimage":
        return qwenimage_txt2img(model, name=name), {**inputs, **_NEGATIVE, "true_cfg_scale": scale}
    return zimage_txt2img(model, name=name), {**inputs, **_NEGATIVE, "guidance_scale": scale}
