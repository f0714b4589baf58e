"""SDXL and SD3 LoRAs as patches on one shared base model: each request equals its diffusers
pipeline after ``load_lora_weights`` at the request's weight."""

import numpy as np
import pytest

from legodiffusion.workflow.catalog import sd3_txt2img, sdxl_txt2img
from tests.helpers import as_hwc, reference_pipeline, run_requests

ARGS = dict(prompt="a lighthouse", negative_prompt="blurry", steps=2, guidance_scale=5.0, height=64, width=64)


def reference_args(args: dict) -> dict:
    out = {k: v for k, v in args.items() if k not in ("steps", "loras", "seed")}
    return dict(out, num_inference_steps=args["steps"])


def check_two_loras(tiny_models, family: str, workflow, pipeline_cls, args: dict, patch_loads: int) -> None:
    """Two concurrent requests with different LoRAs (a at weight 0.6, b at 1) on one resident
    base: one copy of the base, each LoRA injected once per component it patches, each image equal
    to its reference, and the LoRA visibly changes the image."""
    base, lora_a, lora_b = tiny_models[family], tiny_models[f"lora-{family}-a"], tiny_models[f"lora-{family}-b"]
    reqs = [dict(args, seed=1, loras="la:0.6"), dict(args, seed=2, loras="lb")]
    results, engine = run_requests(
        base, [dict(r, workflow=workflow.name) for r in reqs], models={family: base, "la": lora_a, "lb": lora_b}, workflows=[workflow]
    )
    assert all(r.ok for r in results), [r.error for r in results]
    (w,) = engine.workers
    assert w.models.load_counts[(family, "denoiser", None)] == 1, "one copy of the base weights"
    assert w.models.patch_loads == patch_loads
    ref_a = reference_pipeline(pipeline_cls, base, seed=1, lora=lora_a, lora_weight=0.6, **reference_args(args))
    ref_b = reference_pipeline(pipeline_cls, base, seed=2, lora=lora_b, **reference_args(args))
    assert np.abs(as_hwc(results[0].outputs["image"]) - ref_a).max() <= 1e-4
    assert np.abs(as_hwc(results[1].outputs["image"]) - ref_b).max() <= 1e-4
    plain = reference_pipeline(pipeline_cls, base, seed=1, **reference_args(args))
    assert np.abs(plain - ref_a).max() > 1e-3, "the LoRA changes the image"


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # peft says so for any second adapter
def test_sdxl_loras_on_one_base_equal_load_lora_weights(tiny_models):
    from diffusers import StableDiffusionXLPipeline

    # each SDXL LoRA patches the UNet and the text encoder bundle (both CLIPs): 2 injections each
    check_two_loras(tiny_models, "sdxl", sdxl_txt2img("sdxl"), StableDiffusionXLPipeline, ARGS, patch_loads=4)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")
def test_sd3_loras_on_one_base_equal_load_lora_weights(tiny_models):
    from diffusers import StableDiffusion3Pipeline

    # lora-sd3-a patches the transformer and both CLIPs, lora-sd3-b the transformer only
    check_two_loras(tiny_models, "sd3", sd3_txt2img("sd3"), StableDiffusion3Pipeline, dict(ARGS, max_sequence_length=16), patch_loads=3)


def test_sdxl_kohya_lora_equals_load_lora_weights(tiny_models, tmp_path):
    """A LoRA as kohya's SDXL trainer saves it numbers the UNet's blocks as SGM does, which maps
    to diffusers' names only through the base UNet's config."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    from legodiffusion.models.tiny_lora import write_tiny_sdxl_kohya_lora

    base = tiny_models["sdxl"]
    kohya = write_tiny_sdxl_kohya_lora(tmp_path / "kohya.safetensors", tiny_models["lora-sdxl-a"], base)
    with safe_open(kohya, "pt") as f:
        unet_keys = [k for k in f.keys() if k.startswith("lora_unet_")]
        assert unet_keys and all(
            k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")) for k in unet_keys
        )
        assert any(k.startswith("lora_te2_") for k in f.keys())
    args = dict(ARGS, seed=3)
    (r,), engine = run_requests(
        base, [dict(args, workflow="sdxl-txt2img", loras="k:0.7")], models={"sdxl": base, "k": kohya}, workflows=[sdxl_txt2img("sdxl")]
    )
    assert r.ok, r.error
    assert engine.workers[0].models.patch_loads == 2
    ref = reference_pipeline(StableDiffusionXLPipeline, base, seed=3, lora=kohya, lora_weight=0.7, **reference_args(args))
    assert np.abs(as_hwc(r.outputs["image"]) - ref).max() <= 1e-4


def test_text_encoder_weights_of_a_lora_are_ignored_where_the_pipeline_loads_none(tiny_models, tmp_path):
    """ZImagePipeline's load_lora_weights (as FLUX.2's and Qwen-Image's) loads a LoRA's transformer
    weights alone: a Z-Image LoRA file that also patches a text encoder runs as it does there
    (it failed in encode_prompt, which tried the text encoder's)."""
    from diffusers import ZImagePipeline
    from safetensors.torch import load_file, save_file

    from legodiffusion.models.tiny_zimage import write_tiny_zimage_lora
    from legodiffusion.workflow.zimage import zimage_turbo_txt2img

    base = tiny_models["z-image-turbo"]
    lora = write_tiny_zimage_lora(tmp_path / "zi.safetensors", base, seed=5)
    text_encoder = {k: v for k, v in load_file(tiny_models["lora-sd15-a"]).items() if k.startswith("text_encoder.")}
    assert text_encoder, "the SD LoRA patches its text encoder"
    save_file({**load_file(lora), **text_encoder}, lora)
    args = dict(prompt="a castle", steps=1, height=32, width=32, max_sequence_length=16)
    spec = zimage_turbo_txt2img("z-image-turbo")
    results, _ = run_requests(
        base, [dict(args, seed=1, loras="zi", workflow=spec.name)], models={"z-image-turbo": base, "zi": lora}, workflows=[spec]
    )
    assert results[0].ok, results[0].error
    ref = reference_pipeline(ZImagePipeline, base, seed=1, lora=lora, guidance_scale=0.0, **reference_args(args))
    assert np.abs(as_hwc(results[0].outputs["image"]) - ref).max() <= 1e-4
