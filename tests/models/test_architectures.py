"""Full-size architectures from their published configs: counts against published figures, exact
bytes, the simulator's weights, ``build`` on a small component, and the CLI."""

import json
import shutil
from importlib import resources

import pytest
import torch
from typer.testing import CliRunner

from legodiffusion.cli.main import app
from legodiffusion.models.architectures import (
    ARCHITECTURES,
    build,
    parameter_count,
    rewrite_sim_weights,
    table,
    weight_bytes,
)
from legodiffusion.models.components import Denoiser, TextEncoders, component_bytes
from legodiffusion.ops.base import Item
from legodiffusion.ops.text import EncodePrompt
from legodiffusion.sim.reference import load_reference

runner = CliRunner()


def _clip_l() -> int:
    return parameter_count("sd15", "text_encoder")  # SD 1.5's only text encoder


# Published parameter counts; the tolerance covers the rounding of the published figure.
PUBLISHED_PARAMETERS = [
    # FLUX.1 [dev] transformer: 11.9B (the flux1-dev.safetensors checkpoint, 23.8 GB in bf16; the model
    # card rounds it to "12 billion")
    ("flux-dev", "denoiser", 11.9e9, 0.01),
    # SDXL base UNet: 2.567B (SDXL report, Podell et al. 2023: "2.6B"; unet fp16 safetensors 5.14 GB)
    ("sdxl", "denoiser", 2.567e9, 0.001),
    # SD 1.5 UNet: 859.5M (CompVis/runwayml model cards: "860M UNet"; diffusers' count 859,520,964)
    ("sd15", "denoiser", 859.5e6, 0.001),
    # SD3.5 Large MMDiT: "8.1 billion parameters" (stabilityai/stable-diffusion-3.5-large model card)
    ("sd3.5-large", "denoiser", 8.1e9, 0.01),
    # SD3 Medium MMDiT: "2B" (stabilityai/stable-diffusion-3-medium model card)
    ("sd3-medium", "denoiser", 2.0e9, 0.02),
    # CLIP ViT-L/14 text tower: 123.1M (openai/clip-vit-large-patch14; SD 1.5 text_encoder fp32 492 MB)
    ("sd15", "text_encoder", 123.06e6, 0.001),
    # FLUX.2 [klein] 4B / 9B flow transformers (black-forest-labs model cards: "4B", "9B")
    ("flux2-klein-4b", "denoiser", 4.0e9, 0.04),
    ("flux2-klein-9b", "denoiser", 9.0e9, 0.01),
    # Qwen3-4B and Qwen3-8B, klein's text encoders (Qwen model cards: "4.0B", "8.2B")
    ("flux2-klein-4b", "text_encoder", 4.0e9, 0.01),
    ("flux2-klein-9b", "text_encoder", 8.2e9, 0.01),
    # Z-Image(-Turbo) single-stream DiT: "6B" (Tongyi-MAI/Z-Image-Turbo model card)
    ("z-image-turbo", "denoiser", 6.0e9, 0.03),
    # Qwen-Image MMDiT: "20B" (Qwen/Qwen-Image model card); its encoder Qwen2.5-VL-7B-Instruct: 8.29B on the Hub
    ("qwen-image", "denoiser", 20.0e9, 0.03),
    ("qwen-image", "text_encoder", 8.29e9, 0.001),
]


@pytest.mark.parametrize(("name", "component", "published", "rel"), PUBLISHED_PARAMETERS)
def test_parameter_counts_match_published_figures(name, component, published, rel):
    assert parameter_count(name, component) == pytest.approx(published, rel=rel)


def test_text_encoder_counts_match_published_figures():
    # T5 v1.1 XXL encoder: 4.76B (SD3's text_encoder_3 index total_size 9,524,621,312 bytes in fp16)
    t5 = parameter_count("flux-dev", "text_encoder") - _clip_l()
    assert t5 == pytest.approx(4.762e9, rel=0.001)
    # OpenCLIP bigG text tower with projection ("CLIP-G"): 694.7M (SDXL text_encoder_2 fp32 2.78 GB)
    clip_g = parameter_count("sdxl", "text_encoder") - _clip_l()
    assert clip_g == pytest.approx(694.7e6, rel=0.001)
    assert parameter_count("sd3-medium", "text_encoder") == parameter_count("sd3.5-large", "text_encoder")


def test_bytes_match_published_checkpoint_sizes():
    assert weight_bytes("sd3.5-large-turbo", "denoiser", "bf16") == 16_292_561_536  # turbo transformer index
    assert weight_bytes("sd3.5-large", "denoiser", "bf16") == 16_292_561_536
    t5_fp16 = weight_bytes("flux-dev", "text_encoder", "fp16") - weight_bytes("sd15", "text_encoder", "fp16")
    assert t5_fp16 == 9_524_621_312  # SD3 text_encoder_3 model.safetensors.index.json total_size (fp16)
    gb = {  # safetensors sizes as the Hub rounds them (GB = 1e9 bytes; a file adds its header, < 1 MB)
        ("flux-dev", "denoiser", "bf16"): 23.8,  # flux1-dev.safetensors
        ("sdxl", "denoiser", "fp16"): 5.14,  # unet/diffusion_pytorch_model.fp16.safetensors
        ("flux-controlnet-canny", "controlnet", "bf16"): 3.58,  # InstantX/FLUX.1-dev-Controlnet-Canny
        ("flux-controlnet-depth", "controlnet", "bf16"): 3.19,  # Shakker-Labs/FLUX.1-dev-ControlNet-Depth
        ("sd3-controlnet-canny", "controlnet", "fp16"): 1.19,  # InstantX/SD3-Controlnet-Canny
        ("sd3.5-large-controlnet-canny", "controlnet", "fp32"): 8.61,  # stabilityai/...-controlnet-canny
    }
    for (name, component, dtype), size in gb.items():
        half_digit = 0.5 * 10 ** (9 - len(str(size).split(".")[1]))
        assert abs(weight_bytes(name, component, dtype) - size * 1e9) <= half_digit + 1e6, (name, component, dtype)


def test_bf16_bytes_are_two_per_parameter():
    for name, component in [
        ("flux-dev", "denoiser"),
        ("flux-schnell", "denoiser"),
        ("sdxl", "denoiser"),
        ("sd15", "vae"),
        ("flux-controlnet-union", "controlnet"),
        ("sd3.5-large-controlnet-canny", "controlnet"),
    ]:  # no buffers at all
        assert weight_bytes(name, component, "bf16") == 2 * parameter_count(name, component)
        assert weight_bytes(name, component, "fp32") == 4 * parameter_count(name, component)
    for row in table("bf16"):
        name, component, nbytes = row["architecture"], row["component"], row["bytes"]
        assert weight_bytes(name, component, torch.float16) == nbytes
        assert nbytes >= 2 * row["parameters"]
        # 2 x bf16 - fp32 is what does not scale with the dtype: CLIP's int64 position ids only
        assert 0 <= 2 * nbytes - weight_bytes(name, component, "fp32") <= 8 * 77 * 3
    # SD3's positional-embedding table is a buffer, in the checkpoint and in the bytes
    pos_embed = 192 * 192 * 2432
    assert weight_bytes("sd3.5-large", "denoiser") == 2 * (parameter_count("sd3.5-large", "denoiser") + pos_embed)


def test_every_architecture_names_a_source_per_module():
    for arch in ARCHITECTURES.values():
        assert arch.components
        for modules in arch.components.values():
            for spec in modules:
                repo, file = spec.source.split()[:2]
                assert repo.count("/") == 1 and file.endswith("config.json"), spec.source


def test_the_sim_file_holds_the_computed_weights():
    data = load_reference("h100")
    assert rewrite_sim_weights(data) == data, "run `legodiffusion architectures --write-sim legodiffusion/sim/data/h100.json`"
    for model, entry in data["models"].items():
        assert entry["weights_from"]["architecture"] in ARCHITECTURES, model
        assert all(isinstance(v, int) for k, v in entry["weights_bytes"].items() if k != "source")


def test_unknown_names_raise_a_clear_error():
    with pytest.raises(KeyError, match="unknown architecture 'sd4'; known: sd15, sdxl"):
        parameter_count("sd4", "denoiser")
    with pytest.raises(KeyError, match="'sd15' has no component 'controlnet'; it has: denoiser, text_encoder, vae"):
        weight_bytes("sd15", "controlnet")
    with pytest.raises(ValueError, match="dtype must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        weight_bytes("sd15", "vae", "fp8")


def test_build_makes_the_component_the_loaders_would_return():
    vae = build("sd15", "vae", "cpu", torch.bfloat16, seed=0)
    assert isinstance(vae, torch.nn.Module) and not vae.training
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert component_bytes(vae) == weight_bytes("sd15", "vae", "bf16")
    again = build("sd15", "vae", "cpu", torch.bfloat16, seed=0)
    assert torch.equal(next(vae.parameters()), next(again.parameters())), "weights depend only on the seed"

    text = build("sd15", "text_encoder", "cpu", torch.bfloat16)
    assert isinstance(text, TextEncoders) and text.family == "sd"
    assert component_bytes(text) == weight_bytes("sd15", "text_encoder", "bf16")
    (out,) = EncodePrompt().run(text, "default", [Item({"text": "a red fox"})])
    assert out["embedding"]["prompt_embeds"].shape == (1, 77, 768)

    flux = build("flux-dev", "denoiser", "meta", torch.bfloat16)  # 12B: only on the meta device here
    assert isinstance(flux, Denoiser) and flux.family == "flux" and flux.vae_scale_factor == 8
    sd3 = build("sd3-medium", "text_encoder", "meta", torch.bfloat16)
    assert sd3.joint_attention_dim == 4096 and [type(m).__name__ for m in sd3.modules()] == [
        "CLIPTextModelWithProjection",
        "CLIPTextModelWithProjection",
        "T5EncoderModel",
    ]
    assert build("sdxl", "text_encoder", "meta").force_zeros_for_empty_prompt


def test_cli_prints_the_table_and_json():
    result = runner.invoke(app, ["architectures", "sd15", "flux-controlnet-union"])
    assert result.exit_code == 0, result.output
    assert "859,520,964" in result.output and "6,603,913,216" in result.output
    result = runner.invoke(app, ["architectures", "sd15", "--json", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["component"] for r in rows] == ["denoiser", "text_encoder", "vae"]
    assert rows[0]["bytes"] == 4 * 859_520_964 and rows[0]["dtype"] == "float32"
    result = runner.invoke(app, ["architectures", "sd4"])
    assert result.exit_code == 2 and "unknown architecture 'sd4'" in result.output


def test_cli_rewrites_the_sim_file(tmp_path):
    path = tmp_path / "h100.json"
    shutil.copy(resources.files("legodiffusion.sim").joinpath("data/h100.json"), path)
    data = json.loads(path.read_text())
    data["models"]["flux-dev"]["weights_bytes"]["denoiser"] = 1
    path.write_text(json.dumps(data, indent=1) + "\n")
    result = runner.invoke(app, ["architectures", "--write-sim", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(path.read_text()) == load_reference("h100")
