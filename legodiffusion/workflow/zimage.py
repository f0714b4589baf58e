"""Z-Image and Z-Image-Turbo text-to-image, as ZImagePipeline runs them.

Guidance is on whenever ``guidance_scale > 0`` (Z-Image's rule: ``cond + scale * (cond - uncond)``).
Each guided step is then either two denoise nodes, one per guidance branch, which the batcher may
still run in one call when both are ready (``batch_cfg`` false, the default: the branches of
different requests batch freely, as for every other family), or one ``cfg_batch`` denoise node
doing the pipeline's concatenated call (``batch_cfg`` true). Steps past ``cfg_truncation`` run
unguided either way; with two nodes the unconditional one still runs there (a graph's steps are
alike) and its prediction is ignored, the one node runs the conditional branch alone, as the
pipeline does. Turbo is the same graph with the model card's defaults: 8 steps, no guidance.
"""

from __future__ import annotations

from legodiffusion.workflow.inputs import begin, lora_inputs, prompt_text, seed_input, size_inputs
from legodiffusion.workflow.loops import guided_loop, unguided_loop
from legodiffusion.workflow.spec import WorkflowSpec


def zimage_txt2img(
    model: str = "z-image", name: str = "zimage-txt2img", prompt_template: str | None = None, turbo: bool = False
) -> WorkflowSpec:
    wf, prompt = begin(name, model)
    negative = wf.input("negative_prompt", "text", default="", doc="what to steer away from (guided runs only)")
    steps = wf.input("steps", "int", default=8 if turbo else 50, doc="sampling steps")
    guidance = wf.input(
        "guidance_scale",
        "float",
        default=0.0 if turbo else 5.0,
        doc="Z-Image guidance, cond + scale * (cond - uncond), at most 100; 0 disables it",
    )
    normalization = wf.input(
        "cfg_normalization", "float", default=0.0, doc="cap the guided prediction's norm at this times the conditional one's; 0: off"
    )
    truncation = wf.input(
        "cfg_truncation", "float", default=1.0, doc="steps whose normalised time (1000 - t) / 1000 exceeds this run unguided"
    )
    batch_cfg = wf.input("batch_cfg", "bool", default=False, doc="both guidance branches in one denoise node (one call), not one node each")
    seed = seed_input(wf)
    height, width = size_inputs(wf, "a multiple of twice the VAE factor (16); 1024 when null")
    sampler = wf.input("sampler", "text", default="flow_euler", doc="flow_euler (the only sampler of the flow families)")
    max_seq = wf.input("max_sequence_length", "int", default=512, doc="Qwen3 tokens (the chat-formatted prompt, padded and truncated)")
    patch = lora_inputs(wf)

    text = prompt_text(wf, prompt, prompt_template)
    cond = wf.call("encode_prompt", model="base", text=text, max_sequence_length=max_seq, id="encode_prompt", **patch)
    init = wf.call("init_latents", model="base", seed=seed, steps=steps, sampler=sampler, height=height, width=width)
    scales = {"guidance_scale": guidance, "cfg_truncation": truncation}

    def guided():
        uncond = wf.call("encode_prompt", model="base", text=negative, max_sequence_length=max_seq, id="encode_negative", **patch)

        def loop(noises, id):
            latents = guided_loop(
                wf,
                steps,
                init,
                noises,
                mode="zimage_guided",
                step_id="step" + id,
                loop_id="denoise" + id,
                cfg_normalization=normalization,
                **scales,
            )
            return {"latents": latents}

        def pair(latents, state):
            both = wf.call(
                "denoise",
                model="base",
                mode="cfg_batch",
                latents=latents,
                sampler=state,
                embedding=cond.embedding,
                negative_embedding=uncond.embedding,
                id="transformer_cfg",
                **scales,
                **patch,
            )
            return both.noise_cond, both.noise_uncond

        def branches(latents, state):
            c = wf.call("denoise", model="base", latents=latents, sampler=state, embedding=cond.embedding, id="transformer_cond", **patch)
            u = wf.call(
                "denoise", model="base", latents=latents, sampler=state, embedding=uncond.embedding, id="transformer_uncond", **patch
            )
            return c.noise, u.noise

        return {"latents": wf.cond(batch_cfg.eq(True), lambda: loop(pair, "_cfg"), lambda: loop(branches, ""), id="batch_cfg").latents}

    def unguided():
        def noise(latents, state):
            return wf.call(
                "denoise", model="base", latents=latents, sampler=state, embedding=cond.embedding, id="transformer", **patch
            ).noise

        return {"latents": unguided_loop(wf, steps, init, noise, step_id="step_plain", loop_id="denoise_plain")}

    final = wf.cond(guidance > 0, guided, unguided, id="guidance")
    wf.output("image", wf.call("vae_decode", model="base", latents=final.latents, id="decode").image)
    return wf.build()


def zimage_turbo_txt2img(
    model: str = "z-image-turbo", name: str = "zimage-turbo-txt2img", prompt_template: str | None = None
) -> WorkflowSpec:
    """Z-Image-Turbo: the Z-Image graph with 8 steps and no guidance by default."""
    return zimage_txt2img(model, name, prompt_template, turbo=True)


def zimage_for(model: str, name: str, **kwargs) -> WorkflowSpec:
    """The built-in workflow of a Z-Image model: Turbo's defaults where its name says turbo (the
    checkpoints share their architecture and pipeline class; only the name tells them apart)."""
    return zimage_txt2img(model, name, turbo="turbo" in model.lower(), **kwargs)
