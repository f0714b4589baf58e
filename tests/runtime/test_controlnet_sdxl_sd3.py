"""SDXL and SD3 ControlNets as their own nodes: equal to StableDiffusionXLControlNetPipeline and
StableDiffusion3ControlNetPipeline (one ControlNet and several, guess mode, CFG on), and two
requests' ControlNet nodes sharing one call."""

import asyncio

import numpy as np
import torch

from legodiffusion import Engine, EngineConfig
from legodiffusion.workflow.catalog import sd3_txt2img, sdxl_txt2img
from tests.helpers import as_hwc, random_image, reference_pipeline, run_requests

PROMPT = dict(prompt="a house", negative_prompt="fog", steps=2, guidance_scale=6.0, height=64, width=64)


def _sdxl_reference(tiny_models, controlnets: list[str], seed: int, **kwargs) -> np.ndarray:
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    nets = [ControlNetModel.from_pretrained(tiny_models[n]) for n in controlnets]
    return reference_pipeline(
        StableDiffusionXLControlNetPipeline,
        tiny_models["sdxl"],
        seed=seed,
        components={"controlnet": nets[0] if len(nets) == 1 else nets},  # a list: MultiControlNetModel
        prompt=PROMPT["prompt"],
        negative_prompt=PROMPT["negative_prompt"],
        num_inference_steps=PROMPT["steps"],
        guidance_scale=PROMPT["guidance_scale"],
        height=64,
        width=64,
        **kwargs,
    )


def _sd3_reference(tiny_models, controlnets: list[str], seed: int, **kwargs) -> np.ndarray:
    """The pipeline's image; it encodes the control images with torch's global generator, which
    our encode node's generator, seeded with the request's seed, stands for."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    nets = [SD3ControlNetModel.from_pretrained(tiny_models[n]) for n in controlnets]
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(tiny_models["sd3"], controlnet=nets[0] if len(nets) == 1 else nets)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(seed)
    out = pipe(
        prompt=PROMPT["prompt"],
        negative_prompt=PROMPT["negative_prompt"],
        num_inference_steps=PROMPT["steps"],
        guidance_scale=PROMPT["guidance_scale"],
        height=64,
        width=64,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **kwargs,
    )
    return out.images[0]


def _run(tiny_models, family: str, controlnets: tuple[str, ...], inputs: list[dict], workers: int = 1):
    build = sdxl_txt2img if family == "sdxl" else sd3_txt2img
    wf = build(family, name=f"{family}-cn", controlnets=tuple(f"cn{i}" for i in range(len(controlnets))))
    models = {family: tiny_models[family], **{f"cn{i}": tiny_models[n] for i, n in enumerate(controlnets)}}
    extra = {"max_sequence_length": 32} if family == "sd3" else {}
    results, engine = run_requests(
        tiny_models[family], [dict(PROMPT, **extra, **r, workflow=wf.name) for r in inputs], models=models, workflows=[wf], workers=workers
    )
    for r in results:
        assert r.ok, r.error
    assert engine.plane.live_count() == 0
    return [as_hwc(r.outputs["image"]) for r in results]


def test_sdxl_controlnet_matches_the_reference_pipeline(tiny_models):
    image = random_image(64, 64, seed=1)
    (ours,) = _run(tiny_models, "sdxl", ("controlnet-sdxl",), [dict(seed=9, control_image=image, control_scale=0.7)])
    ref = _sdxl_reference(tiny_models, ["controlnet-sdxl"], 9, image=image, controlnet_conditioning_scale=0.7)
    assert np.abs(ours - ref).max() <= 1e-4


def test_two_sdxl_controlnets_in_guess_mode_match_multicontrolnet(tiny_models):
    a, b = random_image(64, 64, seed=1), random_image(64, 64, seed=2)
    inputs = dict(seed=3, control_image=a, control_image_1=b, control_scale=0.7, control_scale_1=0.4, guess_mode=True)
    (ours,) = _run(tiny_models, "sdxl", ("controlnet-sdxl", "controlnet-sdxl"), [inputs])
    ref = _sdxl_reference(tiny_models, ["controlnet-sdxl"] * 2, 3, image=[a, b], controlnet_conditioning_scale=[0.7, 0.4], guess_mode=True)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = _sdxl_reference(tiny_models, ["controlnet-sdxl"] * 2, 3, image=[a, b], controlnet_conditioning_scale=[0.7, 0.4])
    assert np.abs(plain - ref).max() > 1e-3, "guess mode made no difference: the test would not see it ignored"


def test_sd3_controlnet_matches_the_reference_pipeline(tiny_models):
    """An SD3.5-style ControlNet: the prompt's pooled projection, VAE-shifted control latents."""
    image = random_image(64, 64, seed=1)
    (ours,) = _run(tiny_models, "sd3", ("controlnet-sd3",), [dict(seed=9, control_image=image, control_scale=0.7)])
    ref = _sd3_reference(tiny_models, ["controlnet-sd3"], 9, control_image=image, controlnet_conditioning_scale=0.7)
    assert np.abs(ours - ref).max() <= 1e-4
    other = _sd3_reference(
        tiny_models, ["controlnet-sd3"], 9, control_image=random_image(64, 64, seed=2), controlnet_conditioning_scale=0.7
    )
    assert np.abs(other - ref).max() > 1e-3, "the control image made no difference: the test would not see it ignored"


def test_two_sd3_controlnets_match_sd3_multicontrolnet(tiny_models):
    """InstantX-style ControlNets (zero pooled projection, no VAE shift); the second image's noise
    continues the first's generator, as the pipeline's global one."""
    a, b = random_image(64, 64, seed=1), random_image(64, 64, seed=2)
    nets = ("controlnet-sd3-instantx", "controlnet-sd3-instantx")
    (ours,) = _run(tiny_models, "sd3", nets, [dict(seed=5, control_image=a, control_image_1=b, control_scale=0.8, control_scale_1=0.5)])
    ref = _sd3_reference(tiny_models, list(nets), 5, control_image=[a, b], controlnet_conditioning_scale=[0.8, 0.5])
    assert np.abs(ours - ref).max() <= 1e-4


def test_two_requests_share_one_sd3_controlnet_call(tiny_models):
    """Requests arriving together while the worker is busy with an earlier one run their
    ControlNet nodes as one batch, and each image is still its own pipeline's."""
    wf = sd3_txt2img("sd3", name="sd3-cn", controlnets=("cn",))
    requests = [(s, random_image(64, 64, seed=s), sc) for s, sc in ((1, 0.9), (2, 0.6), (3, 0.8))]
    shared = []

    async def main():
        async with Engine(
            {"sd3": tiny_models["sd3"], "cn": tiny_models["controlnet-sd3"]}, EngineConfig(workers=1, device="cpu")
        ) as engine:
            engine.add_workflow(wf)
            engine.on_dispatch_done = lambda d, c: shared.append(len({i.request_id for i in d.items})) if d.op == "controlnet" else None
            # submitted in one go: the first request's nodes take the worker, the others' queue together
            runs = [
                engine.submit("sd3-cn", dict(PROMPT, max_sequence_length=32, seed=s, control_image=im, control_scale=sc))
                for s, im, sc in requests
            ]
            return [await r.future for r in runs], engine.plane.live_count()

    results, live = asyncio.run(main())
    assert max(shared) >= 2, f"no ControlNet call served two requests: {shared}"
    assert live == 0
    for r, (s, im, sc) in zip(results, requests):
        assert r.ok, r.error
        ref = _sd3_reference(tiny_models, ["controlnet-sd3"], s, control_image=im, controlnet_conditioning_scale=sc)
        assert np.abs(as_hwc(r.outputs["image"]) - ref).max() <= 1e-4
