"""Tiny Z-Image pipeline folders (``ZImagePipeline``): a Qwen3 text model read at its second-to-last
layer, a single-stream ``ZImageTransformer2DModel`` on 2x2 patches of 16-channel latents, the Flux VAE
layout (x8, scaling and shift factors) and a flow-matching scheduler.

``z-image`` and ``z-image-turbo`` share the architecture and differ in the scheduler and in how they
are run: the tiny ``z-image`` shifts its schedule with the image size (``use_dynamic_shifting``, so
the pipeline's ``mu`` is exercised), the turbo one uses Z-Image-Turbo's static shift of 3; Turbo is
run as its model card runs it, without guidance and with few steps (the workflows' defaults).
"""

from __future__ import annotations

from pathlib import Path

import torch

#: the Qwen3 hidden size, which the transformer reads as its caption features
_TEXT_DIM = 32


def tiny_zimage_transformer(seed: int):
    """A 2-layer ``ZImageTransformer2DModel`` (one noise and one context refiner layer), width 32."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=_TEXT_DIM,
        axes_dims=[4, 6, 6],  # sums to the head width, 32 / 2
        axes_lens=[1024, 128, 128],  # caption positions up to 1024, images up to 2048 px
    )


def _write_zimage(folder: Path, seed: int, turbo: bool = False) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    # imported here: models.tiny registers these writers, and tiny_qwen builds on models.tiny
    from legodiffusion.models.tiny import _vae
    from legodiffusion.models.tiny_qwen import tiny_qwen3_encoder, tiny_qwen_tokenizer

    tokenizer = tiny_qwen_tokenizer()
    text_encoder = tiny_qwen3_encoder(tokenizer, seed, hidden_size=_TEXT_DIM, layers=3)
    transformer = tiny_zimage_transformer(seed + 1)
    vae = _vae(
        seed + 2,
        latent_channels=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    if turbo:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(folder)


def write_zimage(folder: Path, seed: int) -> None:
    _write_zimage(folder, seed)


def write_zimage_turbo(folder: Path, seed: int) -> None:
    _write_zimage(folder, seed, turbo=True)


def write_tiny_zimage_lora(path: str | Path, base_folder: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA for the tiny Z-Image transformer, as ``ZImagePipeline.load_lora_weights(path)`` accepts it."""
    from legodiffusion.models.tiny_lora import write_transformer_lora

    return write_transformer_lora(path, base_folder, "ZImagePipeline", "ZImageTransformer2DModel", seed, rank)
