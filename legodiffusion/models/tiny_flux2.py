"""The tiny FLUX.2-klein pipeline folder (``Flux2KleinPipeline``) and a LoRA file for it.

Shaped like the real klein checkpoints, scaled down: a ``Qwen3ForCausalLM`` text encoder (hidden 32)
deep enough that the pipeline's default hidden-state layers (9, 18, 27) are distinct middle layers,
a ``Flux2Transformer2DModel`` (1 double and 1 single block, no guidance embedding, 4-D RoPE) on
2x2-patchified latents, an ``AutoencoderKLFlux2`` (x8, 8 latent channels, so 32 per patchified
token) whose batch-norm statistics are random so the latent de-normalisation is exercised, and
the dynamic-shift flow-matching scheduler. ``is_distilled`` is true, as FLUX.2-klein-4B: the
pipeline then runs no classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from legodiffusion.models.tiny import _UNET_LORA_TARGETS, _VAE_BLOCKS
from legodiffusion.models.tiny_lora import write_transformer_lora
from legodiffusion.models.tiny_qwen import tiny_qwen3_encoder, tiny_qwen_tokenizer
from legodiffusion.ops.family_flux2 import HIDDEN_STATES_LAYERS

_LATENT_CHANNELS = 8
#: attention projections of both block kinds: the double blocks' image and text streams, the single blocks' fused one
_LORA_TARGETS = [*_UNET_LORA_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_qkv_mlp_proj"]


def _vae(seed: int):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=_VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
    )
    # A fresh BatchNorm has mean 0 and variance 1, which would make the pipeline's latent
    # de-normalisation an identity; real checkpoints carry trained statistics.
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=g) * 0.2)
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
    return vae


def write_flux2_klein(folder: Path, seed: int, distilled: bool = True) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    tokenizer = tiny_qwen_tokenizer()
    # one layer past the deepest one read, so that one is a middle layer as in the real 36-layer encoders
    text_encoder = tiny_qwen3_encoder(tokenizer, seed, hidden_size=32, layers=max(HIDDEN_STATES_LAYERS) + 1, causal_lm=True)
    torch.manual_seed(seed + 1)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * _LATENT_CHANNELS,  # 2x2 patches of the VAE's latents
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=len(HIDDEN_STATES_LAYERS) * text_encoder.config.hidden_size,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),  # (T, H, W, L); sums to attention_head_dim
        guidance_embeds=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=_vae(seed + 2),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    pipe.save_pretrained(folder)


def write_tiny_flux2_lora(path: str | Path, base_folder: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA for the tiny klein transformer (its double and single blocks' projections too), as
    ``Flux2KleinPipeline.load_lora_weights(path)`` accepts it."""
    return write_transformer_lora(path, base_folder, "Flux2KleinPipeline", "Flux2Transformer2DModel", seed, rank, _LORA_TARGETS)
