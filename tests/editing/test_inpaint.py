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
