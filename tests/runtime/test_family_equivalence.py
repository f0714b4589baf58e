"""SDXL, SD3 and Flux decomposed into nodes reproduce their diffusers pipelines for the same seed."""

import numpy as np
import pytest
import torch

from legodiffusion.workflow.catalog import flux_schnell_txt2img, flux_txt2img, sd3_txt2img, sdxl_txt2img
from tests.helpers import reference_pipeline, run_alone


def reference(pipeline_cls, folder, **kwargs):
    return reference_pipeline(pipeline_cls, folder, **kwargs)


ours = run_alone


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_sdxl(tiny_models, guidance_scale):
    from diffusers import StableDiffusionXLPipeline

    folder = tiny_models["sdxl"]
    args = dict(prompt="a lighthouse", steps=3, guidance_scale=guidance_scale, seed=3, height=64, width=96)
    got = ours("sdxl", folder, sdxl_txt2img("sdxl"), args)
    ref = reference(
        StableDiffusionXLPipeline,
        folder,
        prompt="a lighthouse",
        num_inference_steps=3,
        guidance_scale=guidance_scale,
        seed=3,
        height=64,
        width=96,
    )
    assert np.abs(got - ref).max() <= 1e-4


def test_sdxl_with_a_negative_prompt(tiny_models):
    from diffusers import StableDiffusionXLPipeline

    folder = tiny_models["sdxl"]
    got = ours("sdxl", folder, sdxl_txt2img("sdxl"), dict(prompt="a fox", negative_prompt="blurry", steps=2, seed=1, height=64, width=64))
    ref = reference(
        StableDiffusionXLPipeline, folder, prompt="a fox", negative_prompt="blurry", num_inference_steps=2, seed=1, height=64, width=64
    )
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("guidance_scale", [7.0, 1.0])
def test_sd3(tiny_models, guidance_scale):
    from diffusers import StableDiffusion3Pipeline

    folder = tiny_models["sd3"]
    got = ours(
        "sd3",
        folder,
        sd3_txt2img("sd3"),
        dict(
            prompt="a red fox",
            negative_prompt="dark",
            steps=3,
            guidance_scale=guidance_scale,
            seed=5,
            height=64,
            width=64,
            max_sequence_length=32,
        ),
    )
    ref = reference(
        StableDiffusion3Pipeline,
        folder,
        prompt="a red fox",
        negative_prompt="dark",
        num_inference_steps=3,
        guidance_scale=guidance_scale,
        seed=5,
        height=64,
        width=64,
        max_sequence_length=32,
    )
    assert np.abs(got - ref).max() <= 1e-4


def test_flux_dev(tiny_models):
    from diffusers import FluxPipeline

    folder = tiny_models["flux"]
    got = ours(
        "flux",
        folder,
        flux_txt2img("flux"),
        dict(prompt="a castle", steps=3, guidance=3.5, seed=2, height=64, width=96, max_sequence_length=32),
    )
    ref = reference(
        FluxPipeline,
        folder,
        prompt="a castle",
        num_inference_steps=3,
        guidance_scale=3.5,
        seed=2,
        height=64,
        width=96,
        max_sequence_length=32,
    )
    assert np.abs(got - ref).max() <= 1e-4


def test_flux_schnell(tiny_models):
    from diffusers import FluxPipeline

    folder = tiny_models["flux-schnell"]
    got = ours(
        "flux-schnell",
        folder,
        flux_schnell_txt2img("flux-schnell"),
        dict(prompt="a castle", seed=4, height=64, width=64, max_sequence_length=32),
    )
    ref = reference(
        FluxPipeline,
        folder,
        prompt="a castle",
        num_inference_steps=4,
        guidance_scale=0.0,
        seed=4,
        height=64,
        width=64,
        max_sequence_length=32,
    )
    assert np.abs(got - ref).max() <= 1e-4


def test_sd3_without_t5(tiny_models, tmp_path):
    """T5 is optional for SD3: a folder without it encodes zeros in its place, as diffusers does."""
    import json
    import shutil

    from diffusers import StableDiffusion3Pipeline

    folder = tmp_path / "sd3-no-t5"
    shutil.copytree(tiny_models["sd3"], folder, ignore=shutil.ignore_patterns("text_encoder_3", "tokenizer_3"))
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    got = ours(
        "sd3",
        folder,
        sd3_txt2img("sd3"),
        dict(prompt="a fox", steps=2, guidance_scale=5.0, seed=1, height=64, width=64, max_sequence_length=32),
    )
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_models["sd3"], text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a fox",
        num_inference_steps=2,
        guidance_scale=5.0,
        height=64,
        width=64,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(1),
        output_type="np",
    ).images[0]
    assert np.abs(got - ref).max() <= 1e-4
