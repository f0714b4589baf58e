"""Inpainting decomposed into nodes equals each family's diffusers inpainting pipeline, for the same
seed: base denoisers (the kept region blended back after every step) and 9-channel inpainting UNets,
across strengths (the whole schedule, a middle one, one kept step), samplers, guidance on and off,
and ``padding_mask_crop``."""

import numpy as np
import pytest
import torch

from legodiffusion.workflow.catalog import flux_inpaint, sd3_inpaint, sd_inpaint, sdxl_inpaint
from tests.editing.test_img2img import _image, ours
from tests.helpers import REFERENCE_SCHEDULERS


def _mask(h: int, w: int, box=(0.25, 0.2, 0.7, 0.6)):
    """A white rectangle (to repaint) on black, with a few grey pixels either side of the binarising threshold."""
    from PIL import Image

    m = np.zeros((h, w), dtype=np.uint8)
    top, left, bottom, right = int(box[0] * h), int(box[1] * w), int(box[2] * h), int(box[3] * w)
    m[top:bottom, left:right] = 255
    m[0, :4] = (100, 127, 128, 200)
    return Image.fromarray(m).convert("RGB")


def _reference(pipeline_cls, folder, sampler=None, **kwargs) -> np.ndarray:
    """The pipeline's image as floats in [0, 1] (8-bit where padding_mask_crop makes it a PIL image)."""
    pipe = pipeline_cls.from_pretrained(folder)
    if pipeline_cls.__name__ == "StableDiffusion3InpaintPipeline":
        # diffusers 0.42 decodes SD3 inpainting without the VAE's shift_factor (latents / scaling_factor only),
        # unlike every other SD3 pipeline and its own encoding (huggingface/diffusers#13611, issue 1; PR #14671).
        # We decode as the other SD3 pipelines; the reference gets the upstream fix: the shift added back.
        decode, shift = pipe.vae.decode, pipe.vae.config.shift_factor
        pipe.vae.decode = lambda z, *args, **kw: decode(z + shift, *args, **kw)
    if sampler is not None:
        cls, overrides = REFERENCE_SCHEDULERS[sampler]
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    seed = kwargs.pop("seed")
    crop = kwargs.get("padding_mask_crop") is not None
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil" if crop else "np").images[0]
    return np.asarray(out, dtype=np.float32) / 255 if crop else out


SD_CASES = [
    # strength, steps, sampler, guidance, padding_mask_crop
    (1.0, 3, "euler", 7.5, None),
    (0.6, 5, "euler", 7.5, None),
    (0.3, 4, "ddim", 1.0, None),  # one kept step; no guidance
    (0.75, 4, "euler_ancestral", 7.5, None),  # draws from the generator every step, after the masked image's encoding
    (1.0, 3, "euler_ancestral", 7.5, None),
    (0.7, 4, "dpmpp_2m", 7.5, None),
    (1.0, 3, "euler", 7.5, 4),
]


@pytest.mark.parametrize("strength,steps,sampler,guidance,pad", SD_CASES)
def test_sd_inpaint(tiny_models, strength, steps, sampler, guidance, pad):
    from diffusers import StableDiffusionInpaintPipeline

    folder = tiny_models["sd15"]
    image, mask = _image(64, 72), _mask(64, 72)
    args = dict(prompt="a cat", image=image, mask=mask, strength=strength, steps=steps, sampler=sampler, guidance_scale=guidance, seed=7)
    if pad is not None:
        args["padding_mask_crop"] = pad
    got = ours("sd15", folder, sd_inpaint("sd15"), args)
    ref = _reference(
        StableDiffusionInpaintPipeline,
        folder,
        sampler,
        prompt="a cat",
        image=image,
        mask_image=mask,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=72,
        padding_mask_crop=pad,
        seed=7,
    )
    assert got.shape == ref.shape == (64, 72, 3)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "strength,steps,sampler,guidance",
    [(1.0, 3, "euler", 7.5), (0.5, 4, "euler", 7.5), (0.25, 4, "euler_ancestral", 7.5), (1.0, 2, "euler_ancestral", 1.0)],
)
def test_sd_inpaint_nine_channel(tiny_models, strength, steps, sampler, guidance):
    from diffusers import StableDiffusionInpaintPipeline

    folder = tiny_models["sd15-inpainting"]
    image, mask = _image(64, 64, 4), _mask(64, 64, (0.5, 0.0, 1.0, 0.6))
    args = dict(prompt="a dog", image=image, mask=mask, strength=strength, steps=steps, sampler=sampler, guidance_scale=guidance, seed=11)
    got = ours("sd15-inpainting", folder, sd_inpaint("sd15-inpainting", nine_channel=True), args)
    ref = _reference(
        StableDiffusionInpaintPipeline,
        folder,
        sampler,
        prompt="a dog",
        image=image,
        mask_image=mask,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        seed=11,
    )
    assert np.abs(got - ref).max() <= 1e-4


def test_the_server_registers_an_inpainting_workflow_per_model(tiny_models):
    from legodiffusion.server.catalog import builtin_workflows, models_under
    from legodiffusion.workflow.spec import OpNode

    def modes(spec, op):
        found, todo = set(), list(spec.nodes)
        while todo:
            n = todo.pop()
            if isinstance(n, OpNode):
                found |= {n.mode} if n.op == op else set()
            else:
                todo += (
                    getattr(n, "body", [])
                    + getattr(getattr(n, "then", None), "nodes", [])
                    + getattr(getattr(n, "otherwise", None), "nodes", [])
                )
        return found

    specs = {s.name: s for s in builtin_workflows(models_under(tiny_models["sd15"].parent))}
    for model in ("sd15", "sdxl", "sd3", "flux", "flux-schnell"):
        assert {f"{model}-txt2img", f"{model}-img2img", f"{model}-inpaint"} <= set(specs)
        assert modes(specs[f"{model}-inpaint"], "denoise") == {"default"} and modes(specs[f"{model}-inpaint"], "inpaint_blend")
    for model in ("sd15-inpainting", "sdxl-inpainting"):  # 9-channel UNets only inpaint, reading the mask themselves
        assert {n for n in specs if n.startswith(model)} == {f"{model}-inpaint"}
        assert modes(specs[f"{model}-inpaint"], "denoise") == {"inpaint"} and not modes(specs[f"{model}-inpaint"], "inpaint_blend")


def test_a_mask_of_another_size_is_refused_at_submission(tiny_models):
    import asyncio

    from PIL import Image

    from legodiffusion import Engine, EngineConfig
    from legodiffusion.workflow.errors import WorkflowError

    async def main():
        async with Engine({"sd15": tiny_models["sd15"]}, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(sd_inpaint("sd15"))
            image = _image(64, 72)
            with pytest.raises(WorkflowError, match=r"inputs\.mask.*mask is 64x64 but image is 72x64") as err:
                engine.submit("sd-inpaint", dict(prompt="x", image=image, mask=_mask(64, 64), steps=2))
            assert [i.path for i in err.value.issues] == ["inputs.mask"]
            with pytest.raises(WorkflowError, match="all black"):
                engine.submit("sd-inpaint", dict(prompt="x", image=image, mask=Image.new("L", (72, 64)), padding_mask_crop=8, steps=2))

    asyncio.run(main())


@pytest.mark.parametrize(
    "model,strength,steps,guidance,pad",
    [
        ("sdxl", None, 4, 5.0, None),  # the pipeline's default strength, 0.9999: the image noised, 3 of 4 steps
        ("sdxl", 1.0, 3, 5.0, None),
        ("sdxl", 0.3, 4, 1.0, None),  # one kept step, no guidance
        ("sdxl", 0.8, 4, 5.0, 6),
        ("sdxl-inpainting", 1.0, 3, 5.0, None),
        ("sdxl-inpainting", 0.6, 4, 5.0, None),
    ],
)
def test_sdxl_inpaint(tiny_models, model, strength, steps, guidance, pad):
    from diffusers import StableDiffusionXLInpaintPipeline

    folder = tiny_models[model]
    image, mask = _image(64, 96, 1), _mask(64, 96, (0.0, 0.5, 0.5, 1.0))
    extra = {k: v for k, v in (("strength", strength), ("padding_mask_crop", pad)) if v is not None}
    args = dict(prompt="a lighthouse", image=image, mask=mask, steps=steps, guidance_scale=guidance, seed=3, **extra)
    got = ours(model, folder, sdxl_inpaint(model, nine_channel=model.endswith("inpainting")), args)
    ref = _reference(
        StableDiffusionXLInpaintPipeline,
        folder,
        prompt="a lighthouse",
        image=image,
        mask_image=mask,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=96,
        seed=3,
        **extra,
    )
    assert got.shape == ref.shape == (64, 96, 3)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("strength,steps,guidance,pad", [(None, 4, 7.0, None), (1.0, 3, 7.0, None), (0.3, 3, 1.0, None), (0.5, 4, 7.0, 4)])
def test_sd3_inpaint(tiny_models, strength, steps, guidance, pad):
    from diffusers import StableDiffusion3InpaintPipeline

    folder = tiny_models["sd3"]
    image, mask = _image(64, 64, 2), _mask(64, 64, (0.1, 0.1, 0.45, 0.9))
    extra = {k: v for k, v in (("strength", strength), ("padding_mask_crop", pad)) if v is not None}
    args = dict(prompt="a red fox", negative_prompt="dark", image=image, mask=mask, steps=steps, guidance_scale=guidance, seed=5)
    got = ours("sd3", folder, sd3_inpaint("sd3"), dict(args, max_sequence_length=32, **extra))
    ref = _reference(
        StableDiffusion3InpaintPipeline,
        folder,
        prompt="a red fox",
        negative_prompt="dark",
        image=image,
        mask_image=mask,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        seed=5,
        max_sequence_length=32,
        **extra,
    )
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "model,strength,steps,pad", [("flux", None, 4, None), ("flux", 1.0, 2, None), ("flux", 0.2, 5, None), ("flux-schnell", 0.75, 4, 8)]
)
def test_flux_inpaint(tiny_models, model, strength, steps, pad):
    from diffusers import FluxInpaintPipeline

    folder = tiny_models[model]
    image, mask = _image(64, 96, 3), _mask(64, 96, (0.3, 0.3, 0.9, 0.8))
    extra = {k: v for k, v in (("strength", strength), ("padding_mask_crop", pad)) if v is not None}
    args = dict(prompt="a castle", image=image, mask=mask, steps=steps, seed=2, height=64, width=96, max_sequence_length=32, **extra)
    got = ours(model, folder, flux_inpaint(model, schnell=model == "flux-schnell"), args)
    ref = _reference(
        FluxInpaintPipeline,
        folder,
        prompt="a castle",
        image=image,
        mask_image=mask,
        num_inference_steps=steps,
        guidance_scale=3.5,
        height=64,
        width=96,
        seed=2,
        max_sequence_length=32,
        **extra,
    )
    assert np.abs(got - ref).max() <= 1e-4
