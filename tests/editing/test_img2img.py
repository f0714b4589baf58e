"""Image-to-image decomposed into nodes equals each family's diffusers img2img pipeline, for the
same seed, across strengths (one kept step, a middle one, the whole schedule)."""

import numpy as np
import pytest
import torch

from legodiffusion.workflow.catalog import flux_img2img, sd3_img2img, sd_img2img, sdxl_img2img
from tests.helpers import REFERENCE_SCHEDULERS, random_image, reference_pipeline, run_alone

_image = random_image
ours = run_alone


@pytest.mark.parametrize(
    "strength,steps,sampler,guidance",
    [(0.8, 4, "euler", 7.5), (0.25, 4, "euler", 7.5), (1.0, 3, "ddim", 1.0), (0.6, 5, "euler_ancestral", 7.5), (0.7, 4, "dpmpp_2m", 7.5)],
)
def test_sd_img2img(tiny_models, strength, steps, sampler, guidance):
    from diffusers import StableDiffusionImg2ImgPipeline

    folder = tiny_models["sd15"]
    image = _image(64, 72)
    got = ours(
        "sd15",
        folder,
        sd_img2img("sd15"),
        dict(prompt="a cat", image=image, strength=strength, steps=steps, sampler=sampler, guidance_scale=guidance, seed=7),
    )
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder)
    cls, overrides = REFERENCE_SCHEDULERS[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a cat",
        image=image,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images[0]
    assert got.shape == ref.shape == (64, 72, 3)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_sdxl_img2img(tiny_models, strength):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    folder = tiny_models["sdxl"]
    image = _image(64, 96, 1)
    got = ours("sdxl", folder, sdxl_img2img("sdxl"), dict(prompt="a lighthouse", image=image, strength=strength, steps=4, seed=3))
    ref = reference_pipeline(
        StableDiffusionXLImg2ImgPipeline, folder, prompt="a lighthouse", image=image, strength=strength, num_inference_steps=4, seed=3
    )
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("strength,steps", [(0.6, 4), (0.3, 3), (1.0, 3)])
def test_sd3_img2img(tiny_models, strength, steps):
    from diffusers import StableDiffusion3Img2ImgPipeline

    folder = tiny_models["sd3"]
    image = _image(64, 64, 2)
    args = dict(prompt="a red fox", negative_prompt="dark", image=image, strength=strength, steps=steps, seed=5, max_sequence_length=32)
    got = ours("sd3", folder, sd3_img2img("sd3"), args)
    ref = reference_pipeline(
        StableDiffusion3Img2ImgPipeline,
        folder,
        prompt="a red fox",
        negative_prompt="dark",
        image=image,
        strength=strength,
        num_inference_steps=steps,
        seed=5,
        max_sequence_length=32,
    )
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("strength,steps", [(0.6, 4), (1.0, 2), (0.2, 5)])
def test_flux_img2img(tiny_models, strength, steps):
    from diffusers import FluxImg2ImgPipeline

    folder = tiny_models["flux"]
    image = _image(64, 96, 3)
    args = dict(prompt="a castle", image=image, strength=strength, steps=steps, seed=2, height=64, width=96, max_sequence_length=32)
    got = ours("flux", folder, flux_img2img("flux"), args)
    ref = reference_pipeline(
        FluxImg2ImgPipeline,
        folder,
        prompt="a castle",
        image=image,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=3.5,
        seed=2,
        height=64,
        width=96,
        max_sequence_length=32,
    )
    assert np.abs(got - ref).max() <= 1e-4


def test_strength_that_leaves_no_step_is_refused_at_submission(tiny_models):
    import asyncio

    from legodiffusion import Engine, EngineConfig
    from legodiffusion.workflow.errors import WorkflowError

    async def main():
        async with Engine({"sd15": tiny_models["sd15"]}, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(sd_img2img("sd15"))
            for strength, why in ((0.1, "leaves no step"), (0.0, r"strength must be in \(0, 1\]"), (1.5, r"\(0, 1\]")):
                with pytest.raises(WorkflowError, match=why):
                    engine.submit("sd-img2img", dict(prompt="x", image=_image(64, 64), strength=strength, steps=4))

    asyncio.run(main())


def test_an_unsized_edit_is_costed_and_bounded_at_its_image_size():
    """With height/width null an edit works at its image's size (as diffusers preprocesses it), so
    that is the size its cost and its bounds are read at, not the model's native size."""
    from legodiffusion.core.coordinator import pixels
    from legodiffusion.ops import default_registry
    from legodiffusion.workflow.bounds import RequestBounds, request_cost
    from legodiffusion.workflow.errors import WorkflowError
    from legodiffusion.workflow.expand import Expander, bind_inputs

    spec = sd_img2img("sd15")
    ex = Expander(spec, default_registry())

    def bound(**given):
        inputs = bind_inputs(spec, dict(prompt="x", steps=4, **given))
        return ex.template(inputs), inputs

    tmpl, inputs = bound(image=_image(48, 80))
    assert pixels(inputs, tmpl) == 48 * 80
    tmpl, inputs = bound(image=_image(48, 80), height=64)  # a size given wins; the other side is the image's
    assert pixels(inputs, tmpl) == 64 * 80

    class Flat:
        def exec_s(self, *a):
            return 0.01

    tmpl, inputs = bound(image=_image(300, 40))
    with pytest.raises(WorkflowError, match="max_side=256"):
        request_cost(tmpl, inputs, Flat(), RequestBounds(max_side=256), lambda model: 64 * 64)
