"""Shared test helpers: run the engine synchronously, build the reference diffusers pipeline."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

from legodiffusion import Engine, EngineConfig, sd_txt2img

REFERENCE_SCHEDULERS = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler}


def reference_image(
    folder, sampler="euler", prompt="a cat", negative_prompt="", steps=4, guidance_scale=7.5, seed=0, height=64, width=64
) -> np.ndarray:
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = REFERENCE_SCHEDULERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt,
        negative_prompt=negative_prompt or None,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        height=height,
        width=width,
        output_type="np",
    )
    return out.images[0]


def as_hwc(image: torch.Tensor) -> np.ndarray:
    return image[0].permute(1, 2, 0).numpy()


def run_requests(folder, requests: list[dict], workers=1, sequential=False, workflows=None, models=None, slo_s=None, **config):
    """Run ``requests`` (dicts with an optional "workflow" key) on a fresh engine."""

    async def main():
        async with Engine(models or {"sd15": folder}, EngineConfig(workers=workers, device="cpu", **config)) as engine:
            for spec in workflows or [sd_txt2img("sd15")]:
                engine.add_workflow(spec)
            results = []
            if sequential:
                for r in requests:
                    r = dict(r)
                    results.append(await engine.run(r.pop("workflow", "sd-txt2img"), r, slo_s=slo_s))
            else:
                runs = []
                for r in requests:
                    r = dict(r)
                    runs.append(engine.submit(r.pop("workflow", "sd-txt2img"), r, slo_s=slo_s))
                results = [await run.future for run in runs]
            return results, engine

    return asyncio.run(main())
