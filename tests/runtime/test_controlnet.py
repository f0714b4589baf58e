"""ControlNet as its own nodes: equal to diffusers' ControlNet pipeline, and concurrent with the
base model's own computation when two workers are free."""

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

from legodiffusion import Engine, EngineConfig
from legodiffusion.workflow.catalog import sd_txt2img
from tests.helpers import as_hwc, reference_pipeline, run_requests


def control_image(size=64):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


DTYPES = pytest.mark.parametrize("dtype", ["fp32", "bf16"])
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


@DTYPES
def test_sd_controlnet_matches_the_reference_pipeline(tiny_models, dtype):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    base, cn = tiny_models["sd15"], tiny_models["controlnet-sd15"]
    image = control_image()
    wf = sd_txt2img("sd15", name="sd-cn", controlnets=("cn",))
    args = dict(
        prompt="a house",
        negative_prompt="fog",
        steps=3,
        guidance_scale=6.0,
        seed=9,
        height=64,
        width=64,
        control_image=image,
        control_scale=0.7,
    )
    (result,), engine = run_requests(base, [dict(args, workflow="sd-cn")], models={"sd15": base, "cn": cn}, workflows=[wf], dtype=dtype)
    assert result.ok, result.error
    ref = reference_pipeline(
        StableDiffusionControlNetPipeline,
        base,
        seed=9,
        torch_dtype=TORCH_DTYPE[dtype],
        components={"controlnet": ControlNetModel.from_pretrained(cn, torch_dtype=TORCH_DTYPE[dtype])},
        prompt="a house",
        image=image,
        negative_prompt="fog",
        num_inference_steps=3,
        guidance_scale=6.0,
        height=64,
        width=64,
        controlnet_conditioning_scale=0.7,
    )
    assert np.abs(as_hwc(result.outputs["image"]) - ref).max() <= 1e-4
    assert engine.plane.live_count() == 0


def test_two_controlnets_and_one_worker(tiny_models):
    """With one worker the ControlNets simply run first; two ControlNets add their residuals."""
    base, cn = tiny_models["sd15"], tiny_models["controlnet-sd15"]
    wf = sd_txt2img("sd15", name="sd-cn2", controlnets=("cn", "cn"))
    args = dict(
        prompt="x",
        steps=2,
        seed=1,
        height=64,
        width=64,
        control_image=control_image(),
        control_image_1=control_image(),
        control_scale_1=0.5,
        workflow="sd-cn2",
    )
    (result,), engine = run_requests(base, [args], models={"sd15": base, "cn": cn}, workflows=[wf])
    assert result.ok, result.error
    assert engine.coordinator.stats.nodes_by_op["controlnet"] == 2 * 2 * 2  # 2 nets x 2 branches x 2 steps
    (w,) = engine.workers
    assert w.models.load_counts[("cn", "controlnet", None)] == 1, "one ControlNet model shared by both uses"


def test_controlnet_overlaps_the_base_model_on_two_workers(tiny_models):
    base, cn = tiny_models["sd15"], tiny_models["controlnet-sd15"]
    wf = sd_txt2img("sd15", name="sd-cn", controlnets=("cn",))
    spans = []

    async def main():
        async with Engine({"sd15": base, "cn": cn}, EngineConfig(workers=2, device="cpu")) as engine:
            engine.add_workflow(wf)
            engine.on_dispatch_done = lambda d, c: spans.append((d.op, d.worker, c.start_s, c.end_s, tuple(i.key for i in d.items)))
            r = await engine.run(
                "sd-cn", dict(prompt="x", steps=3, guidance_scale=1.0, seed=0, height=128, width=128, control_image=control_image(128))
            )
            assert r.ok, r.error

    asyncio.run(main())
    cns = [s for s in spans if s[0] == "controlnet"]
    unets = [s for s in spans if s[0] == "denoise"]
    assert len(cns) == len(unets) == 3
    overlapping = [
        (c, u)
        for c in cns
        for u in unets
        if c[4][0].rsplit(".", 1)[0] == u[4][0].rsplit(".", 1)[0] and c[1] != u[1] and u[2] < c[3] and c[2] < u[3]
    ]
    assert overlapping, f"no step's ControlNet overlapped its base model: {spans}"


@DTYPES
def test_flux_controlnet_matches_the_reference_pipeline(tiny_models, dtype):
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    from legodiffusion.workflow.catalog import flux_txt2img

    base, cn = tiny_models["flux"], tiny_models["controlnet-flux"]
    image = control_image()
    wf = flux_txt2img("flux", name="flux-cn", controlnets=("cn",))
    args = dict(
        prompt="a bridge",
        steps=3,
        guidance=3.5,
        seed=4,
        height=64,
        width=64,
        max_sequence_length=32,
        control_image=image,
        control_scale=0.6,
    )
    (result,), engine = run_requests(base, [dict(args, workflow="flux-cn")], models={"flux": base, "cn": cn}, workflows=[wf], dtype=dtype)
    assert result.ok, result.error
    ref = reference_pipeline(
        FluxControlNetPipeline,
        base,
        seed=4,
        torch_dtype=TORCH_DTYPE[dtype],
        components={"controlnet": FluxControlNetModel.from_pretrained(cn, torch_dtype=TORCH_DTYPE[dtype])},
        prompt="a bridge",
        control_image=image,
        num_inference_steps=3,
        guidance_scale=3.5,
        height=64,
        width=64,
        max_sequence_length=32,
        controlnet_conditioning_scale=0.6,
    )
    assert np.abs(as_hwc(result.outputs["image"]) - ref).max() <= 1e-4
    assert engine.plane.live_count() == 0
