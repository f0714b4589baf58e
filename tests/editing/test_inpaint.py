"""Inpainting decomposed into nodes equals each family's diffusers inpainting pipeline, for the same
seed: base denoisers (the kept region blended back after every step) and 9-channel inpainting UNets,
across strengths (the whole schedule, a middle one, one kept step), samplers, guidance on and off,
and ``padding_mask_crop``."""

import numpy as np
import pytest
import torch

from legodiffusion.workflow.catalog import sd_inpaint
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
            with pytest.raises(WorkflowError, match=r"inputs\.mask.*mask is 64x64 pixels but image is 72x64") as err:
                engine.submit("sd-inpaint", dict(prompt="x", image=image, mask=_mask(64, 64), steps=2))
            assert [i.path for i in err.value.issues] == ["inputs.mask"]
            with pytest.raises(WorkflowError, match="all black"):
                engine.submit("sd-inpaint", dict(prompt="x", image=image, mask=Image.new("L", (72, 64)), padding_mask_crop=8, steps=2))

    asyncio.run(main())
