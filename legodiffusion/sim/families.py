"""Simulated workflows of the Qwen-read families: FLUX.2-klein, Z-Image(-Turbo) and Qwen-Image.

The simulator prices a node by its operator, mode and model, so a family's simulated workflow needs
only the shape of its graph. Until the live builders of these families are in the workflow
catalogue, each is drawn with the catalogue builder of the same shape:

- FLUX.2-klein 4B / 9B (step- and guidance-distilled) and Z-Image-Turbo (guidance 0): encode, N x
  (one denoiser call, unguided sampler step), decode, as FLUX.1-schnell (``flux_txt2img(schnell=True)``);
- Qwen-Image (true CFG with a negative prompt) and Z-Image (CFG): both prompts encoded, N x (two
  denoiser calls, guided sampler step), decode, as SD3 with guidance above 1 (``sd3_txt2img``).

Default steps and guidance are the model cards' (``step-counts`` in ``sim/data/h100.json``; Z-Image:
diffusers 0.42.1's ZImagePipeline defaults).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from legodiffusion.workflow.catalog import flux_txt2img, sd3_txt2img
from legodiffusion.workflow.spec import WorkflowSpec


class FamilyModel(NamedTuple):
    guided: bool  # two denoiser calls per step (CFG), else one
    steps: int
    guidance: float | None  # the CFG scale of a guided model


MODELS = {
    "flux2-klein-4b": FamilyModel(False, 4, None),
    "flux2-klein-9b": FamilyModel(False, 4, None),
    "z-image-turbo": FamilyModel(False, 9, None),
    "z-image": FamilyModel(True, 50, 5.0),
    "qwen-image": FamilyModel(True, 50, 4.0),
}


def txt2img(model: str, name: str, steps: int | None = None, guidance: float | None = None) -> tuple[WorkflowSpec, dict[str, Any]]:
    """The simulated text-to-image workflow of ``model`` and the inputs it binds: ``steps`` (default
    the model card's) and, for a guided model, ``guidance_scale`` (default the model card's)."""
    try:
        m = MODELS[model]
    except KeyError:
        raise KeyError(f"model {model!r} has no simulated family workflow; known: {', '.join(MODELS)}") from None
    inputs: dict[str, Any] = {"steps": m.steps if steps is None else steps}
    if not m.guided:
        if guidance is not None:
            raise ValueError(f"guidance: {model} is guidance-distilled and takes none, got {guidance}")
        return flux_txt2img(model, name=name, schnell=True), inputs
    inputs["guidance_scale"] = m.guidance if guidance is None else guidance
    if inputs["guidance_scale"] <= 1:
        raise ValueError(f"guidance: {model} runs true CFG, so its scale must be above 1, got {inputs['guidance_scale']}")
    return sd3_txt2img(model, name=name), inputs
