"""The decomposed run reproduces diffusers' StableDiffusionPipeline for the same seed."""

import io

import numpy as np
import pytest
from PIL import Image

from legodiffusion.runtime.images import to_png
from tests.helpers import as_hwc, reference_image, run_requests


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_matches_stable_diffusion_pipeline(sd15, sampler, guidance_scale, size):
    h, w = size
    args = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", steps=5, guidance_scale=guidance_scale, seed=7, height=h, width=w)
    (result,), engine = run_requests(sd15, [dict(args, sampler=sampler)])
    assert result.ok, result.error
    ref = reference_image(sd15, sampler=sampler, **args)
    ours = as_hwc(result.outputs["image"])
    assert ours.shape == ref.shape == (h, w, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    png = np.asarray(Image.open(io.BytesIO(to_png(result.outputs["image"])[0])), dtype=np.int16)
    ref_png = (ref * 255).round().astype(np.int16)
    assert np.abs(png - ref_png).max() <= 1
    assert engine.plane.live_count() == 0


def test_guidance_doubles_the_denoiser_nodes(sd15):
    (guided, plain), _ = run_requests(sd15, [dict(prompt="x", steps=3, guidance_scale=5.0), dict(prompt="x", steps=3, guidance_scale=1.0)])
    # guided: 2 encodes + init + 3 x (2 denoise + step) + decode; plain: 1 encode + init + 3 x 2 + decode
    assert (guided.nodes, plain.nodes) == (13, 9)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "euler_karras", "dpmpp_2m", "dpmpp_2m_karras"])
def test_stochastic_and_karras_samplers_match_too(sd15, sampler):
    """euler_ancestral draws noise every step from the request's generator, whose state travels
    in the sampler state from step to step; euler_karras uses Karras sigmas."""
    args = dict(prompt="a fox", negative_prompt="", steps=4, guidance_scale=5.0, seed=11, height=64, width=64)
    (result,), _ = run_requests(sd15, [dict(args, sampler=sampler)], workers=2)
    assert result.ok, result.error
    ref = reference_image(sd15, sampler=sampler, **args)
    assert np.abs(as_hwc(result.outputs["image"]) - ref).max() <= 1e-4
