"""Qwen-Image text-to-image, as ``QwenImagePipeline``.

True CFG runs, as in the pipeline, only when a negative prompt is given and ``true_cfg_scale > 1``:
then each step is two transformer nodes and a ``sampler_step`` in ``true_cfg`` mode (the combined
prediction rescaled to the conditional one's norm); otherwise one transformer node per step.
"""

from __future__ import annotations

from legodiffusion.ops.family_qwenimage import DEFAULT_MAX_SEQ
from legodiffusion.workflow.inputs import begin, lora_inputs, prompt_text, seed_input, size_inputs
from legodiffusion.workflow.loops import guided_loop, unguided_loop
from legodiffusion.workflow.spec import WorkflowSpec


def qwenimage_txt2img(model: str = "qwen-image", name: str = "qwenimage-txt2img", prompt_template: str | None = None) -> WorkflowSpec:
    """Qwen-Image text-to-image: Qwen2.5-VL prompt embeddings, packed latents, true CFG."""
    wf, prompt = begin(name, model)
    negative = wf.input("negative_prompt", "text", default=None, doc="what to steer away from; null: no CFG (as QwenImagePipeline)")
    scale = wf.input("true_cfg_scale", "float", default=4.0, doc="true CFG with a negative prompt, at most 100; <= 1 disables it")
    steps = wf.input("steps", "int", default=50, doc="sampling steps")
    seed = seed_input(wf)
    height, width = size_inputs(wf, "a multiple of twice the VAE factor; model's native size when null")
    sampler = wf.input("sampler", "text", default="flow_euler", doc="flow_euler")
    patch = lora_inputs(wf)
    max_seq = wf.input("max_sequence_length", "int", default=DEFAULT_MAX_SEQ, doc="prompt tokens kept after the template")

    text = prompt_text(wf, prompt, prompt_template)
    cond = wf.call("encode_prompt", model="base", text=text, max_sequence_length=max_seq, id="encode_prompt", **patch)
    init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler=sampler, height=height, width=width)

    def transformer(latents, state, embedding, id):
        return wf.call("denoise", model="base", latents=latents, sampler=state, embedding=embedding, id=id, **patch).noise

    def guided():
        uncond = wf.call("encode_prompt", model="base", text=negative, max_sequence_length=max_seq, id="encode_negative", **patch)

        def noises(latents, state):
            return (
                transformer(latents, state, cond.embedding, "transformer_cond"),
                transformer(latents, state, uncond.embedding, "transformer_uncond"),
            )

        return {"latents": guided_loop(wf, steps, init, noises, mode="true_cfg", step_id="step", loop_id="denoise", guidance_scale=scale)}

    def unguided(tag: str):
        def noise(latents, state):
            return transformer(latents, state, cond.embedding, f"transformer{tag}")

        return {"latents": unguided_loop(wf, steps, init, noise, step_id=f"step{tag}", loop_id=f"denoise{tag}")}

    def with_negative():
        return {"latents": wf.cond(scale > 1, guided, lambda: unguided("_plain"), id="guidance").latents}

    final = wf.cond(negative.ne(None), with_negative, lambda: unguided("_positive"), id="negative")
    wf.output("image", wf.call("vae_decode", model="base", latents=final.latents, id="decode").image)
    return wf.build()
