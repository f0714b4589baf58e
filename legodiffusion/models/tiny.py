"""Tiny random-weight model folders in diffusers format.

They are built from small configs, saved with ``save_pretrained`` and loaded back by the rest of the
project through exactly the ``from_pretrained`` calls that real checkpoints use. Nothing is
downloaded: the CLIP tokenizer is a byte-level BPE vocabulary generated here.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_FAMILIES = ("sd15",)

# A few merges so the tokenizer does real BPE work; everything else falls back to bytes.
_MERGES = ["t h", "th e</w>", "a n", "i n", "o n", "e r", "a r", "e n", "o r", "s t"]


def _byte_unicode_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    codes = list(printable)
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    alphabet = _byte_unicode_alphabet()
    tokens = alphabet + [a + "</w>" for a in alphabet]
    tokens += ["".join(m.split()) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in _MERGES], model_max_length=max_length)


def _write_sd15(folder: Path, seed: int) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 2)
    # Four levels of blocks: an x8-downsampling VAE like the real one, kept narrow.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


_WRITERS = {"sd15": _write_sd15}


def write_tiny_models(root: str | Path, seed: int = 0, families=TINY_FAMILIES) -> dict[str, Path]:
    """Write (or reuse) tiny model folders under ``root``; returns family -> folder.

    A folder is reused when its ``model_index.json`` exists, so repeated calls are cheap. The
    weights depend only on ``seed``.
    """
    root = Path(root)
    out = {}
    for family in families:
        folder = root / family
        if not (folder / "model_index.json").exists():
            _WRITERS[family](folder, seed)
        out[family] = folder
    return out
