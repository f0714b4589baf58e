"""The two-stage hires workflow equals the two diffusers calls it is made of: text-to-image with
``output_type="latent"``, ``F.interpolate`` of the latents, then the family's image-to-image
pipeline (``from_pipe``) on them with a fresh generator seeded with the seed."""

import asyncio

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from legodiffusion.workflow.hires import flux_hires, sd3_hires, sd_hires, sdxl_hires
from tests.editing.test_img2img import ours
from tests.helpers import REFERENCE_SCHEDULERS


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _two_calls(txt_cls, img_cls, folder, first: dict, second: dict, seed: int, scale, mode, size, sampler=None, unpack=False):
    """The reference: ``lat = txt(...).images``, upscaled, then ``img2img(image=lat, ...)``."""
    pipe = txt_cls.from_pretrained(folder)
    if sampler is not None:
        cls, overrides = REFERENCE_SCHEDULERS[sampler]
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    lat = pipe(**first, height=size[0], width=size[1], output_type="latent", generator=_gen(seed)).images
    if unpack:  # Flux returns packed latents; its img2img pipeline takes them unpacked
        lat = txt_cls._unpack_latents(lat, size[0], size[1], pipe.vae_scale_factor)
    lat = F.interpolate(lat, scale_factor=scale, mode=mode)
    img2img = img_cls.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return img2img(**second, image=lat, generator=_gen(seed), output_type="np").images[0]


@pytest.mark.parametrize(
    "sampler,steps,hires_steps,strength,scale,mode,guidance",
    [
        ("euler", 3, 4, 0.5, 2.0, "nearest-exact", 7.5),
        ("euler_ancestral", 3, None, 0.7, 1.5, "bilinear", 7.5),  # draws every step: the second stage's generator is fresh
        ("dpmpp_2m", 2, 3, 1.0, 1.5, "bicubic", 1.0),
    ],
)
def test_sd_hires(tiny_models, sampler, steps, hires_steps, strength, scale, mode, guidance):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    folder = tiny_models["sd15"]
    inputs = dict(
        prompt="a cat",
        negative_prompt="blurry",
        steps=steps,
        guidance_scale=guidance,
        sampler=sampler,
        seed=11,
        height=64,
        width=48,
        scale=scale,
        strength=strength,
        upscale_mode=mode,
    )
    if hires_steps is not None:
        inputs["hires_steps"] = hires_steps
    got = ours("sd15", folder, sd_hires("sd15"), inputs)
    text = dict(prompt="a cat", negative_prompt="blurry", guidance_scale=guidance)
    ref = _two_calls(
        StableDiffusionPipeline,
        StableDiffusionImg2ImgPipeline,
        folder,
        dict(text, num_inference_steps=steps),
        dict(text, num_inference_steps=hires_steps or steps, strength=strength),
        11,
        scale,
        mode,
        (64, 48),
        sampler,
    )
    assert got.shape == ref.shape == (int(64 * scale), int(48 * scale), 3)
    assert np.abs(got - ref).max() <= 1e-4


def test_sdxl_hires(tiny_models):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    folder = tiny_models["sdxl"]
    inputs = dict(prompt="a lighthouse", steps=3, hires_steps=4, seed=4, height=64, width=64, scale=1.5, strength=0.5)
    got = ours("sdxl", folder, sdxl_hires("sdxl"), inputs)
    ref = _two_calls(
        StableDiffusionXLPipeline,
        StableDiffusionXLImg2ImgPipeline,
        folder,
        dict(prompt="a lighthouse", num_inference_steps=3),
        dict(prompt="a lighthouse", num_inference_steps=4, strength=0.5),
        4,
        1.5,
        "nearest-exact",
        (64, 64),
    )
    assert got.shape == ref.shape == (96, 96, 3)
    assert np.abs(got - ref).max() <= 1e-4


def test_sd3_hires(tiny_models):
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

    folder = tiny_models["sd3"]
    text = dict(prompt="a red fox", negative_prompt="dark", max_sequence_length=32)
    inputs = dict(text, steps=3, hires_steps=5, seed=5, height=64, width=64, scale=2.0, strength=0.6, upscale_mode="bilinear")
    got = ours("sd3", folder, sd3_hires("sd3"), inputs)
    ref = _two_calls(
        StableDiffusion3Pipeline,
        StableDiffusion3Img2ImgPipeline,
        folder,
        dict(text, num_inference_steps=3),
        dict(text, num_inference_steps=5, strength=0.6, height=128, width=128),
        5,
        2.0,
        "bilinear",
        (64, 64),
    )
    assert got.shape == ref.shape == (128, 128, 3)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("scale,strength,mode", [(1.5, 0.5, "nearest-exact"), (2.0, 1.0, "bicubic")])
def test_flux_hires(tiny_models, scale, strength, mode):
    from diffusers import FluxImg2ImgPipeline, FluxPipeline

    folder = tiny_models["flux"]
    text = dict(prompt="a castle", max_sequence_length=32)
    inputs = dict(text, steps=3, hires_steps=4, seed=2, height=64, width=96, scale=scale, strength=strength, upscale_mode=mode)
    got = ours("flux", folder, flux_hires("flux"), inputs)
    target = (int(64 * scale), int(96 * scale))
    ref = _two_calls(
        FluxPipeline,
        FluxImg2ImgPipeline,
        folder,
        dict(text, num_inference_steps=3, guidance_scale=3.5),
        dict(text, num_inference_steps=4, guidance_scale=3.5, strength=strength, height=target[0], width=target[1]),
        2,
        scale,
        mode,
        (64, 96),
        unpack=True,
    )
    assert got.shape == ref.shape == (*target, 3)
    assert np.abs(got - ref).max() <= 1e-4


def test_hires_seed_and_steps_default_to_the_first_stage_s(tiny_models):
    """Left out, ``hires_steps`` and ``hires_seed`` take ``steps`` and ``seed``; given, their own."""
    folder = tiny_models["sd15"]
    base = dict(prompt="a cat", steps=3, seed=9, height=64, width=64, scale=1.5, strength=0.7, guidance_scale=1.0)
    implicit = ours("sd15", folder, sd_hires("sd15"), base)
    explicit = ours("sd15", folder, sd_hires("sd15"), dict(base, hires_steps=3, hires_seed=9))
    other = ours("sd15", folder, sd_hires("sd15"), dict(base, hires_seed=10))
    assert np.array_equal(implicit, explicit)
    assert np.abs(implicit - other).max() > 1e-3


def test_a_scale_off_the_size_factor_is_refused_at_submission(tiny_models):
    from legodiffusion import Engine, EngineConfig
    from legodiffusion.workflow.errors import WorkflowError

    async def main():
        async with Engine({"flux": tiny_models["flux"]}, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(flux_hires("flux"))
            base = dict(prompt="x", steps=2, height=64, width=64, max_sequence_length=32)
            # 64 x 1.125 = 72 is a multiple of 8 but not of Flux's 16
            with pytest.raises(WorkflowError, match=r"inputs\.scale.*not a positive multiple of 16"):
                engine.submit("flux-hires", dict(base, scale=1.125))
            with pytest.raises(WorkflowError, match=r"inputs\.upscale_mode"):
                engine.submit("flux-hires", dict(base, upscale_mode="lanczos"))
            with pytest.raises(WorkflowError, match=r"inputs\.strength.*\(0, 1\]"):
                engine.submit("flux-hires", dict(base, strength=1.5))
            with pytest.raises(WorkflowError, match=r"inputs\.hires_steps.*>= 1"):
                engine.submit("flux-hires", dict(base, hires_steps=0))

    asyncio.run(main())


def test_the_second_stage_batches_with_other_requests_second_stages(tiny_models):
    """Two hires requests (64 -> 96) beside text-to-image ones at 96x96: their second-stage steps
    run in one denoiser call (ordinary nodes of the same shape), and every image equals its run
    alone. A first request takes the idle worker, so the others queue and start together."""
    from legodiffusion import Engine, EngineConfig
    from legodiffusion.workflow.catalog import sd_txt2img

    folder = tiny_models["sd15"]
    first = ("sd-txt2img", dict(prompt="first", steps=1, height=64, width=64, guidance_scale=1.0))
    hires = [dict(prompt=f"a cat {i}", steps=2, hires_steps=4, strength=1.0, scale=1.5, seed=i, height=64, width=64) for i in range(2)]
    plain = [dict(prompt=f"a dog {i}", steps=6, seed=10 + i, height=96, width=96) for i in range(2)]
    requests = [first] + [("sd-hires", r) for r in hires] + [("sd-txt2img", r) for r in plain]
    calls: list[set] = []

    def record(d, c):
        if d.op == "denoise":
            calls.append({(item.request_id, item.key.split("[")[0]) for item in d.items})

    async def main():
        async with Engine({"sd15": folder}, EngineConfig(workers=1, device="cpu", default_latency_batch=8)) as engine:
            engine.add_workflow(sd_hires("sd15"))
            engine.add_workflow(sd_txt2img("sd15"))
            engine.on_dispatch_done = record
            runs = [engine.submit(wf, inputs) for wf, inputs in requests]
            return [await r.future for r in runs]

    results = asyncio.run(main())
    assert all(r.ok for r in results)
    assert any(len({rid for rid, key in call if key == "guidance.hires_denoise"}) == 2 for call in calls), calls
    for (wf, inputs), shared in zip(requests, results, strict=True):
        alone = ours("sd15", folder, sd_hires("sd15") if wf == "sd-hires" else sd_txt2img("sd15"), inputs)
        assert np.abs(shared.outputs["image"][0].permute(1, 2, 0).numpy() - alone).max() <= 1e-4
