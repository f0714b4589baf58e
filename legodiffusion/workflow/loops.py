"""The two denoise loops of the flow families built outside the catalog (FLUX.2-klein, Z-Image,
Qwen-Image): one model call per step and an unguided sampler step, or two branches (however the
family computes them) and a guided one. Node ids are the caller's, so templates keep theirs."""

from __future__ import annotations

from collections.abc import Callable

from legodiffusion.workflow.builder import WorkflowBuilder


def unguided_loop(wf: WorkflowBuilder, steps, init, noise: Callable, *, step_id: str, loop_id: str):
    """``steps`` steps from ``init``'s latents and sampler state; ``noise(latents, state)`` adds
    the step's model call and returns its prediction. Returns the final latents."""

    def step(latents, state):
        s = wf.call("sampler_step", mode="unguided", latents=latents, sampler=state, noise=noise(latents, state), id=step_id)
        return s.latents, s.sampler

    return wf.denoise_loop(steps, init.latents, init.sampler, step, id=loop_id).latents


def guided_loop(wf: WorkflowBuilder, steps, init, noises: Callable, *, mode: str, step_id: str, loop_id: str, **scales):
    """As :func:`unguided_loop`, with ``noises(latents, state)`` returning the (conditional,
    unconditional) predictions that the sampler step ``mode`` combines with ``scales``."""

    def step(latents, state):
        noise_cond, noise_uncond = noises(latents, state)
        s = wf.call(
            "sampler_step",
            mode=mode,
            latents=latents,
            sampler=state,
            noise_cond=noise_cond,
            noise_uncond=noise_uncond,
            id=step_id,
            **scales,
        )
        return s.latents, s.sampler

    return wf.denoise_loop(steps, init.latents, init.sampler, step, id=loop_id).latents
