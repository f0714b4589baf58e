"""The tiny Qwen-Image model: a ``QwenImagePipeline`` folder with random weights.

* text encoder: ``Qwen2_5_VLForConditionalGeneration`` (text hidden 32, 2 layers, and the small
  vision tower every Qwen2.5-VL checkpoint carries, never run for text-to-image), read through the
  offline ``Qwen2Tokenizer`` of :mod:`legodiffusion.models.tiny_qwen`;
* transformer: ``QwenImageTransformer2DModel``, 2 blocks on 2x2-packed latents;
* VAE: ``AutoencoderKLQwenImage`` (causal 3D convolutions, x4 spatially here) with latent
  statistics that are not the identity, so the pipeline's (un)normalisation is exercised;
* scheduler: flow matching with Qwen-Image's dynamic shift (exponential, shift_terminal 0.02).

The pipeline defaults to ``default_sample_size`` 128 latents (512 px here): pass ``height``/``width``
(multiples of 8) and a small ``max_sequence_length`` to keep it fast. Same seed, same files.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from legodiffusion.ops.family_qwenimage import PROMPT_TEMPLATE

LATENT_CHANNELS = 4


def template_words() -> tuple[str, ...]:
    """The words of QwenImagePipeline's prompt template (a leading space kept), each to be one token
    as in Qwen's vocabulary: the template's first 34 tokens, which the pipeline drops, are then its
    system turn and the user turn's opening, as with the real tokenizer, and the embedding starts
    at the prompt."""
    text = re.sub(r"<\|[a-z_]+\|>", "", PROMPT_TEMPLATE)  # the control tokens are tokens already
    return tuple(dict.fromkeys(re.findall(r" ?[A-Za-z]+", text)))


def _text_encoder(tokenizer, seed: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    # head_dim 8: the multimodal RoPE sections (temporal, height, width) split its 4 frequencies
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32},
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


def write_qwenimage(folder: Path, seed: int) -> None:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    from legodiffusion.models.tiny_qwen import tiny_qwen_tokenizer  # it imports models.tiny, which imports this module

    tokenizer = tiny_qwen_tokenizer(words=template_words())
    text_encoder = _text_encoder(tokenizer, seed)
    torch.manual_seed(seed + 1)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * LATENT_CHANNELS,  # latents are packed 2x2 into tokens
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder.config.text_config.hidden_size,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLQwenImage(
        base_dim=16,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.05, 0.3],
        latents_std=[1.5, 0.8, 2.0, 1.2],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        time_shift_type="exponential",
        shift_terminal=0.02,
    )
    QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    ).save_pretrained(folder)


def write_tiny_qwenimage_lora(path: str | Path, base_folder: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA for the tiny Qwen-Image transformer, as ``QwenImagePipeline.load_lora_weights(path)`` accepts it."""
    from legodiffusion.models.tiny_lora import write_transformer_lora

    return write_transformer_lora(path, base_folder, "QwenImagePipeline", "QwenImageTransformer2DModel", seed, rank)
