"""FLUX.2-klein text-to-image, as ``Flux2KleinPipeline``.

A step-distilled checkpoint (``is_distilled`` in its ``model_index.json``, as FLUX.2-klein-4B)
runs one transformer call per step and no guidance. A base checkpoint runs classifier-free
guidance against the empty prompt (the pipeline takes no negative prompt) when ``guidance_scale > 1``:
two transformer calls per step and the plain combination in ``sampler_step``.
"""

from __future__ import annotations

from pathlib import Path

from legodiffusion.ops.family_flux2 import MAX_SEQUENCE_LENGTH
from legodiffusion.workflow.inputs import begin, lora_inputs, prompt_text, seed_input, size_inputs
from legodiffusion.workflow.loops import guided_loop, unguided_loop
from legodiffusion.workflow.spec import WorkflowSpec

#: default steps: 4 for the step-distilled checkpoints (as BFL recommends), the pipeline's 50 otherwise
_STEPS = {True: 4, False: 50}


def is_distilled(folder: str | Path) -> bool:
    """Whether a klein checkpoint is step-distilled (the pipeline then ignores guidance)."""
    from legodiffusion.models.components import model_index  # (torch: not for the simulator, which imports this module)

    return bool(model_index(Path(folder)).get("is_distilled", False))


def flux2_klein_txt2img(
    model: str = "flux2-klein", name: str = "flux2-klein-txt2img", prompt_template: str | None = None, distilled: bool = True
) -> WorkflowSpec:
    """FLUX.2-klein text-to-image: Qwen3 prompt embedding, patchified latents, flow matching with
    an image-size dependent shift; ``distilled`` as the checkpoint's ``is_distilled``."""
    wf, prompt = begin(name, model)
    steps = wf.input("steps", "int", default=_STEPS[distilled], doc="sampling steps")
    seed = seed_input(wf)
    height, width = size_inputs(wf, "a multiple of twice the VAE factor (16); 1024 when null")
    max_seq = wf.input("max_sequence_length", "int", default=MAX_SEQUENCE_LENGTH, doc="Qwen3 tokens the prompt is padded to")
    guidance = None
    if not distilled:
        guidance = wf.input(
            "guidance_scale", "float", default=4.0, doc="classifier-free guidance against the empty prompt; <= 1 disables it"
        )
    patch = lora_inputs(wf)
    text = prompt_text(wf, prompt, prompt_template)
    cond = wf.call("encode_prompt", model="base", text=text, max_sequence_length=max_seq, id="encode_prompt", **patch)
    init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler="flow_euler", height=height, width=width)

    def denoise(latents, state, embedding, tag):
        return wf.call("denoise", model="base", latents=latents, sampler=state, embedding=embedding, id=f"transformer{tag}", **patch).noise

    def unguided():
        def noise(latents, state):
            return denoise(latents, state, cond.embedding, "")

        return {"latents": unguided_loop(wf, steps, init, noise, step_id="step_plain", loop_id="denoise_plain")}

    def guided():
        uncond = wf.call("encode_prompt", model="base", text="", max_sequence_length=max_seq, id="encode_negative", **patch)

        def noises(latents, state):
            return denoise(latents, state, cond.embedding, "_cond"), denoise(latents, state, uncond.embedding, "_uncond")

        return {"latents": guided_loop(wf, steps, init, noises, mode="guided", step_id="step", loop_id="denoise", guidance_scale=guidance)}

    latents = unguided()["latents"] if guidance is None else wf.cond(guidance > 1, guided, unguided, id="guidance").latents
    wf.output("image", wf.call("vae_decode", model="base", latents=latents, id="decode").image)
    return wf.build()
