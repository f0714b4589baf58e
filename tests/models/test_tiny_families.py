"""The tiny sdxl / sd3 / flux folders, controlnets and LoRAs load and run in the reference diffusers pipelines."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from legodiffusion.models.tiny import TINY_EXTRAS, TINY_FAMILIES, tiny_t5_tokenizer, write_tiny_models

PROMPT = "a photo of a cat"


def _run(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 2, "height": 64, "width": 64, **kwargs}
    out = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), output_type="np", **kwargs)
    image = out.images
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()
    return image


@pytest.fixture(scope="module")
def control_image():
    return Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))


def test_default_set(tiny_models):
    assert TINY_FAMILIES == ("sd15", "sdxl", "sd3", "flux", "flux-schnell", "flux2-klein", "z-image", "z-image-turbo", "qwen-image")
    assert set(tiny_models) == set(TINY_FAMILIES) | set(TINY_EXTRAS)
    for family in TINY_FAMILIES:
        assert (tiny_models[family] / "model_index.json").exists()
    assert tiny_models["lora-sd15-a"].name == "lora-sd15-a.safetensors"
    assert tiny_models["lora-sd15-b"].is_file()
    assert (tiny_models["controlnet-flux"] / "diffusion_pytorch_model.safetensors").exists()


def test_same_seed_same_bytes(tiny_models, tmp_path):
    again = write_tiny_models(tmp_path / "again", seed=0)
    root = tiny_models["sd15"].parent
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert any(str(f).endswith(".safetensors") for f in files)
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for f in files:
        assert filecmp.cmp(root / f, tmp_path / "again" / f, shallow=False), f
    assert set(again) == set(tiny_models)
    # A different seed gives different weights.
    other = write_tiny_models(tmp_path / "other", seed=1, families=("flux",), extras=())
    name = "transformer/diffusion_pytorch_model.safetensors"
    assert not filecmp.cmp(other["flux"] / name, tiny_models["flux"] / name, shallow=False)


def test_t5_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tiny_t5_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.model_max_length == 512
    ids = tok("a photo of a Cat!", padding="max_length", max_length=16).input_ids
    assert len(ids) == 16 and ids[ids.index(1) + 1 :] == [0] * (15 - ids.index(1))
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a Cat!"
    assert tok.convert_ids_to_tokens(tok("ü").input_ids) == ["▁", "<unk>", "</s>"]


def test_sdxl(tiny_models):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"])
    assert pipe.vae_scale_factor == 8 and pipe.config.force_zeros_for_empty_prompt
    unet = pipe.unet.config
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    image = _run(pipe, guidance_scale=5.0)
    np.testing.assert_array_equal(image, _run(pipe, guidance_scale=5.0))
    _run(pipe, height=None, width=None)  # the UNet's sample_size gives 64 px by default


def test_sd3(tiny_models):
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_models["sd3"])
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer_max_length == 77
    assert pipe.transformer.config.in_channels == pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_3.config.d_model
    short = _run(pipe, guidance_scale=5.0, max_sequence_length=32)
    full = _run(pipe, guidance_scale=5.0)  # the pipeline's default T5 length, 256
    assert not np.array_equal(short, full)


@pytest.mark.parametrize("family", ["flux", "flux-schnell"])
def test_flux(tiny_models, family):
    pipe = FluxPipeline.from_pretrained(tiny_models[family])
    assert pipe.vae_scale_factor == 8
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    assert pipe.transformer.config.guidance_embeds == (family == "flux")
    assert pipe.scheduler.config.use_dynamic_shifting == (family == "flux")
    _run(pipe, guidance_scale=3.5 if family == "flux" else 0.0, max_sequence_length=32)


def test_controlnet_sd15(tiny_models, control_image):
    controlnet = ControlNetModel.from_pretrained(tiny_models["controlnet-sd15"])
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_models["sd15"], controlnet=controlnet, safety_checker=None)
    on = _run(pipe, image=control_image)
    off = _run(pipe, image=control_image, controlnet_conditioning_scale=0.0)
    assert np.abs(on - off).max() > 1e-3


def test_controlnet_flux(tiny_models, control_image):
    controlnet = FluxControlNetModel.from_pretrained(tiny_models["controlnet-flux"])
    pipe = FluxControlNetPipeline.from_pretrained(tiny_models["flux"], controlnet=controlnet)
    on = _run(pipe, control_image=control_image, max_sequence_length=32)
    off = _run(pipe, control_image=control_image, max_sequence_length=32, controlnet_conditioning_scale=0.0)
    assert np.abs(on - off).max() > 1e-3


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # peft says so for any second adapter
def test_lora_sd15(tiny_models):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd15"])
    base = _run(pipe)
    pipe.load_lora_weights(tiny_models["lora-sd15-a"], adapter_name="a")
    pipe.load_lora_weights(tiny_models["lora-sd15-b"], adapter_name="b")
    assert pipe.get_list_adapters() == {"unet": ["a", "b"], "text_encoder": ["a", "b"]}
    pipe.set_adapters("a")
    a = _run(pipe)
    pipe.set_adapters("b")
    b = _run(pipe)
    assert np.abs(a - base).max() > 1e-3 and np.abs(b - base).max() > 1e-3 and np.abs(a - b).max() > 1e-3
    pipe.disable_lora()
    np.testing.assert_allclose(_run(pipe), base, atol=1e-5)
