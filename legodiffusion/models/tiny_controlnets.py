"""Tiny ControlNets for the SDXL and SD3 tiny models (extras of :func:`~legodiffusion.models.tiny.write_tiny_models`).

As :func:`~legodiffusion.models.tiny.write_tiny_controlnet` does for sd15 and flux, each body is
copied from the base model like a freshly initialised real ControlNet, and the zero-initialised
layers get small random weights so the control image visibly changes the result.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch


def _randomise_zero_init(modules: list, seed: int) -> None:
    from legodiffusion.models.tiny import _randomise_

    params = {f"{i:03d}.{name}": p for i, m in enumerate(modules) for name, p in m.named_parameters()}
    _randomise_(params, seed, std=0.05)


def write_tiny_sdxl_controlnet(folder: str | Path, base_folder: str | Path, seed: int = 0) -> Path:
    """A ``ControlNetModel`` from the tiny sdxl UNet: its ``text_time`` addition embedding (pooled
    text embeds and six size/crop numbers) comes with it, as for real SDXL ControlNets."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)  # the conditioning embedding is freshly initialised from the global RNG
    unet = UNet2DConditionModel.from_pretrained(Path(base_folder) / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
    _randomise_zero_init(
        [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block], seed
    )
    controlnet.save_pretrained(folder)
    return folder


def write_tiny_sd3_controlnet(
    folder: str | Path, base_folder: str | Path, seed: int = 0, force_zeros_for_pooled_projection: bool = False
) -> Path:
    """An ``SD3ControlNetModel`` for the tiny sd3 transformer with one block (the transformer's two
    blocks both read its residual). By default SD3.5-style: it reads the prompt's pooled projection
    and the VAE-shifted control latents; with ``force_zeros_for_pooled_projection`` InstantX-style
    (zero pooled projection, no VAE shift), as the pipeline tells them apart."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    folder = Path(folder)
    transformer = SD3Transformer2DModel.from_pretrained(Path(base_folder) / "transformer")
    accepted = inspect.signature(SD3ControlNetModel.__init__).parameters
    config = {k: v for k, v in transformer.config.items() if k in accepted}
    torch.manual_seed(seed)
    controlnet = SD3ControlNetModel(**{**config, "num_layers": 1, "force_zeros_for_pooled_projection": force_zeros_for_pooled_projection})
    # as SD3ControlNetModel.from_transformer copies them (strict=False: the controlnet has fewer blocks)
    for part in ("pos_embed", "time_text_embed", "context_embedder", "transformer_blocks"):
        getattr(controlnet, part).load_state_dict(getattr(transformer, part).state_dict(), strict=False)
    _randomise_zero_init([controlnet.pos_embed_input, *controlnet.controlnet_blocks], seed)
    controlnet.save_pretrained(folder)
    return folder


def write_tiny_sd35_controlnet(folder: str | Path, base_folder: str | Path, seed: int = 0) -> Path:
    """An ``SD3ControlNetModel`` configured as Stability's SD3.5-large ControlNets (canny, depth,
    blur; ``models/data/architectures.json``): no patch embedding of its own (the pipeline lends it
    the base transformer's), no context embedder (single-stream blocks that read no text), the
    prompt's pooled projection; as many blocks as the tiny transformer has. Its weights are its
    own, as those ControlNets were trained, not copied from the base."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    folder = Path(folder)
    base = SD3Transformer2DModel.from_pretrained(Path(base_folder) / "transformer").config
    torch.manual_seed(seed)
    controlnet = SD3ControlNetModel(
        sample_size=base.sample_size,
        patch_size=base.patch_size,
        in_channels=base.in_channels,
        num_layers=base.num_layers,
        attention_head_dim=base.attention_head_dim,
        num_attention_heads=base.num_attention_heads,
        joint_attention_dim=None,
        caption_projection_dim=base.caption_projection_dim,
        pooled_projection_dim=base.pooled_projection_dim,
        out_channels=base.out_channels,
        pos_embed_max_size=None,
        pos_embed_type=None,
        use_pos_embed=False,
        force_zeros_for_pooled_projection=False,
    )
    _randomise_zero_init([controlnet.pos_embed_input, *controlnet.controlnet_blocks], seed)
    controlnet.save_pretrained(folder)
    return folder


# name -> (base family, path under root), merged into tiny.TINY_EXTRAS
EXTRAS = {
    "controlnet-sdxl": ("sdxl", "controlnet-sdxl"),
    "controlnet-sd3": ("sd3", "controlnet-sd3"),
    "controlnet-sd3-instantx": ("sd3", "controlnet-sd3-instantx"),
    "controlnet-sd35": ("sd3", "controlnet-sd35"),
}
# name -> writer(out, base folder, seed), merged into tiny._EXTRA_WRITERS
WRITERS = {
    "controlnet-sdxl": write_tiny_sdxl_controlnet,
    "controlnet-sd3": write_tiny_sd3_controlnet,
    "controlnet-sd3-instantx": lambda out, base, seed: write_tiny_sd3_controlnet(
        out, base, seed + 1, force_zeros_for_pooled_projection=True
    ),
    "controlnet-sd35": lambda out, base, seed: write_tiny_sd35_controlnet(out, base, seed + 2),
}
