"""Shared test helpers: run the engine synchronously, build the reference diffusers pipeline."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)

from legodiffusion import Engine, EngineConfig, sd_txt2img

REFERENCE_SCHEDULERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "euler_karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
}


def reference_image(
    folder, sampler="euler", prompt="a cat", negative_prompt="", steps=4, guidance_scale=7.5, seed=0, height=64, width=64
) -> np.ndarray:
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    cls, overrides = REFERENCE_SCHEDULERS[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
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


def run_alone(name: str, folder, workflow, inputs: dict) -> np.ndarray:
    """One request of ``workflow`` (model ``name`` from ``folder``) on a fresh engine, as an HWC
    array; it must succeed and leave nothing in the data plane."""
    (result,), engine = run_requests(folder, [dict(inputs, workflow=workflow.name)], models={name: folder}, workflows=[workflow])
    assert result.ok, result.error
    assert engine.plane.live_count() == 0
    return as_hwc(result.outputs["image"])


def random_image(h: int, w: int, seed: int = 0):
    """An RGB PIL image ``h`` pixels high and ``w`` wide of seeded uniform noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def reference_pipeline(
    pipeline_cls, folder, seed: int, lora=None, lora_weight: float = 1.0, torch_dtype=torch.float32, **kwargs
) -> np.ndarray:
    """The image a diffusers pipeline class makes from ``folder`` with ``generator`` seeded by ``seed``
    (optionally with a LoRA loaded by ``load_lora_weights`` at ``lora_weight``), loaded in
    ``torch_dtype``."""
    pipe = pipeline_cls.from_pretrained(folder, torch_dtype=torch_dtype, **kwargs.pop("components", {}))
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="x")
        pipe.set_adapters(["x"], adapter_weights=[lora_weight])
    return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
