"""Random-weight folders of full-size architectures read like real checkpoints: catalogue, cheap
facts, workflow choice and server scan from configs alone; components built at full size on demand."""

import pytest
import torch

from legodiffusion.models.architectures import weight_bytes
from legodiffusion.models.components import component_bytes, load_component, pipeline_config
from legodiffusion.models.precision import Precision
from legodiffusion.models.random_folder import is_random, write_folder
from legodiffusion.models.store import ModelCatalog
from legodiffusion.server.catalog import models_under, txt2img_for

# (latent channels, native size, width of the prompt embedding, T5 present)
FACTS = {
    "sd15": (4, 512, 768),
    "sdxl": (4, 1024, 2048),
    "sd3-medium": (16, 1024, 4096),
    "sd3.5-large": (16, 1024, 4096),
    "flux-dev": (16, 1024, 4096),
    "flux-schnell": (16, 1024, 4096),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    for name in [*FACTS, "sd15-controlnet-canny"]:
        write_folder(name, root / name)
    return root


def test_folders_give_the_published_facts_without_weights(root):
    for name, (channels, size, text_dim) in FACTS.items():
        cfg = pipeline_config(root / name)
        assert (cfg.latent_channels, cfg.default_size, cfg.text_dim) == (channels, size, text_dim), name
        assert is_random(root / name) and not list((root / name).rglob("*.safetensors"))
    assert models_under(root).keys() == {*FACTS, "sd15-controlnet-canny"}
    ModelCatalog(models_under(root))  # every folder is accepted as a model
    assert txt2img_for(root / "flux-schnell", "flux-schnell").name == "flux-schnell-txt2img"
    assert "guidance" in txt2img_for(root / "flux-dev", "flux-dev").inputs
    assert "guidance" not in txt2img_for(root / "flux-schnell", "flux-schnell").inputs


def test_a_component_is_built_at_full_size_in_its_precision(root):
    vae = load_component(root / "sd15", "vae", Precision("bf16"))
    assert component_bytes(vae) == weight_bytes("sd15", "vae", torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert vae.decoder.conv_out.weight.abs().sum() > 0  # random, not empty
    cfg = load_component(root / "sd15", "config", Precision("bf16"))
    assert cfg.dtype is torch.bfloat16 and cfg.scheduler_config["steps_offset"] == 1
