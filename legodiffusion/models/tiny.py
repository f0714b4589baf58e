"""Tiny random-weight model folders in diffusers format.

They are built from small configs, saved with ``save_pretrained`` and loaded back by the rest of the
project through exactly the ``from_pretrained`` calls that real checkpoints use. Nothing is
downloaded: the CLIP tokenizer is a byte-level BPE vocabulary and the T5 tokenizer a small unigram
vocabulary, both generated here.

Families (each a full pipeline folder, loadable by the matching diffusers pipeline class):

* ``sd15``: ``StableDiffusionPipeline``; 4 latent channels, x8 VAE, CLIP length 77.
* ``sdxl``: ``StableDiffusionXLPipeline``; two CLIP encoders (hidden 32 and 48, projection 48),
  ``text_time`` conditioning, 4 latent channels, x8 VAE, CLIP length 77.
* ``sd3``: ``StableDiffusion3Pipeline``; two projected CLIP encoders (hidden 32 and 48, pooled 32 + 48),
  a T5 encoder (d_model 96), an MMDiT with patch 2, 16 latent channels, x8 VAE, flow matching (shift 3).
* ``flux`` / ``flux-schnell``: ``FluxPipeline``; CLIP (hidden 32, pooled) + T5 (d_model 64), a Flux
  transformer with 1 double and 1 single block on 2x2-packed latents, 16 latent channels, x8 VAE;
  ``flux`` embeds guidance and shifts its schedule with the image size, ``flux-schnell`` does neither.
* ``flux2-klein``: ``Flux2KleinPipeline`` (FLUX.2-klein, step-distilled); see :mod:`legodiffusion.models.tiny_flux2`.
* ``z-image`` / ``z-image-turbo``: ``ZImagePipeline`` (:mod:`legodiffusion.models.tiny_zimage`).
* ``qwen-image``: ``QwenImagePipeline`` (:mod:`legodiffusion.models.tiny_qwenimage`).

Extras written next to them by :func:`write_tiny_models`: ``controlnet-sd15`` (a ``ControlNetModel``
for the sd15 UNet), ``controlnet-flux`` (a ``FluxControlNetModel`` for the flux transformer) and two
diffusers-format LoRA files for sd15, ``lora-sd15-a.safetensors`` and ``lora-sd15-b.safetensors``,
and inpainting checkpoints ``sd15-inpainting`` / ``sdxl-inpainting`` (``StableDiffusionInpaintPipeline`` /
``StableDiffusionXLInpaintPipeline``: the base's text encoders and VAE, a UNet with 9 input channels).

The T5 tokenizers have ``model_max_length`` 512 and T5's relative attention works at any length, so
the pipelines' defaults (SD3: 256, Flux: 512) run; pass a small ``max_sequence_length`` (e.g. 32)
to keep the tiny models fast. The Flux pipelines default to 1024 px (their ``default_sample_size``
is hard-coded), so pass ``height``/``width``; sd15/sdxl/sd3 default to 64 px.

Everything depends only on the seed: writing twice with the same seed gives byte-identical files.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from legodiffusion.models import tiny_controlnets
from legodiffusion.models.tiny_lora import write_tiny_sd3_lora, write_tiny_sdxl_lora, write_transformer_lora
from legodiffusion.models.tiny_qwenimage import write_qwenimage
from legodiffusion.models.tiny_zimage import write_zimage, write_zimage_turbo

TINY_FAMILIES = ("sd15", "sdxl", "sd3", "flux", "flux-schnell", "flux2-klein", "z-image", "z-image-turbo", "qwen-image")

# Written by default after the families, each only when the family it builds on is written too.
# name -> (base family, path under root)
TINY_EXTRAS = {
    "controlnet-sd15": ("sd15", "controlnet-sd15"),
    "controlnet-flux": ("flux", "controlnet-flux"),
    "lora-sd15-a": ("sd15", "lora-sd15-a.safetensors"),
    "lora-sd15-b": ("sd15", "lora-sd15-b.safetensors"),
    "lora-sdxl-a": ("sdxl", "lora-sdxl-a.safetensors"),
    "lora-sdxl-b": ("sdxl", "lora-sdxl-b.safetensors"),
    "lora-sd3-a": ("sd3", "lora-sd3-a.safetensors"),
    "lora-sd3-b": ("sd3", "lora-sd3-b.safetensors"),
    "sd15-inpainting": ("sd15", "sd15-inpainting"),
    "sdxl-inpainting": ("sdxl", "sdxl-inpainting"),
    **tiny_controlnets.EXTRAS,
}

# A few merges so the tokenizer does real BPE work; everything else falls back to bytes.
_MERGES = ["t h", "th e</w>", "a n", "i n", "o n", "e r", "a r", "e n", "o r", "s t"]

# Whole-word pieces of the tiny T5 vocabulary; anything else is spelled out letter by letter.
_T5_WORDS = ["a", "an", "the", "of", "in", "on", "and", "with", "cat", "dog", "photo", "painting", "red", "blue", "house", "tree"]
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&%+=*#@"

# The x8 VAE used by every family: four levels of blocks like the real ones, kept narrow.
_VAE_BLOCKS = (8, 8, 16, 16)


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


def tiny_t5_tokenizer(max_length: int = 512):
    """An offline T5 tokenizer: a unigram vocabulary of T5's specials, a few words and single characters.

    Ids follow T5: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; no sentinel (``<extra_id_*>``) tokens.
    Characters outside the vocabulary become ``<unk>``.
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    pieces += [("▁" + w, -2.0) for w in _T5_WORDS]
    pieces += [("▁" + c, -8.0) for c in _T5_CHARS]
    pieces += [(c, -9.0) for c in _T5_CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _clip_text_encoder(tokenizer, seed: int, hidden_size: int = 32, projection_dim: int | None = None):
    """A 2-layer CLIP text encoder; with ``projection_dim`` a ``CLIPTextModelWithProjection``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def _t5_encoder(tokenizer, seed: int, d_model: int):
    """A 2-layer T5 v1.1-style (gated-gelu) encoder."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def _vae(seed: int, latent_channels: int, **config):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_BLOCKS),
        block_out_channels=_VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        **config,
    )


def _write_sd15(folder: Path, seed: int, in_channels: int = 4) -> None:
    """With ``in_channels=9``: an inpainting checkpoint (its UNet reads the mask and the masked
    image's latents beside the latents), the same text encoder and VAE."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = _vae(seed + 2, latent_channels=4)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = (StableDiffusionPipeline if in_channels == 4 else StableDiffusionInpaintPipeline)(
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


def _write_sdxl(folder: Path, seed: int, in_channels: int = 4) -> None:
    """With ``in_channels=9``: an inpainting checkpoint, as :func:`_write_sd15`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, seed, hidden_size=32)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, seed + 1, hidden_size=48, projection_dim=48)
    time_embed_dim = 8
    torch.manual_seed(seed + 2)
    # Modelled on diffusers' SDXL pipeline test components: linear projections, text_time conditioning
    # on the pooled text_encoder_2 embedding plus six size/crop numbers, and cross-attention on both
    # encoders' penultimate hidden states concatenated.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_encoder_2.config.projection_dim,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        norm_num_groups=8,
    )
    vae = _vae(seed + 3, latent_channels=4, scaling_factor=0.13025, force_upcast=False)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipe = (StableDiffusionXLPipeline if in_channels == 4 else StableDiffusionXLInpaintPipeline)(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)


def _write_sd3(folder: Path, seed: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, seed, hidden_size=32, projection_dim=32)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, seed + 1, hidden_size=48, projection_dim=48)
    # Wider than the two CLIP hidden sizes together (80) so the pipeline's zero padding of the CLIP
    # embeddings up to the T5 width is exercised, as with the real 768 + 1280 -> 4096.
    text_encoder_3 = _t5_encoder(tokenizer_3, seed + 2, d_model=96)
    latent_channels = 16
    torch.manual_seed(seed + 3)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=latent_channels,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=text_encoder_3.config.d_model,
        caption_projection_dim=32,  # = num_attention_heads * attention_head_dim
        pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
        out_channels=latent_channels,
        pos_embed_max_size=32,  # up to 512 px
    )
    vae = _vae(
        seed + 4,
        latent_channels=latent_channels,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)


def _write_flux(folder: Path, seed: int, schnell: bool = False) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, seed, hidden_size=32)
    text_encoder_2 = _t5_encoder(tokenizer_2, seed + 1, d_model=64)
    latent_channels = 16
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # latents are packed 2x2 into tokens
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=not schnell,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    vae = _vae(
        seed + 3,
        latent_channels=latent_channels,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    if schnell:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)


def _write_flux_schnell(folder: Path, seed: int) -> None:
    _write_flux(folder, seed, schnell=True)


def _randomise_(params: dict[str, torch.Tensor], seed: int, std) -> None:
    """Refill ``params`` in name order with normal noise from a generator seeded with ``seed``.

    ``std`` is a number or a function of (name, tensor).
    """
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(params.items()):
            scale = std(name, p) if callable(std) else std
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)


def write_tiny_controlnet(folder: str | Path, base_folder: str | Path, family: str = "sd15", seed: int = 0) -> Path:
    """Write a tiny ControlNet for the ``family`` model at ``base_folder`` (``sd15`` or ``flux``).

    Its body is copied from the base model's UNet/transformer like a freshly initialised real
    ControlNet, but the zero-initialised layers (conditioning embedding output, residual projections)
    get small random weights so the control image visibly changes the result.
    """
    folder, base_folder = Path(folder), Path(base_folder)
    # The conditioning embedding of the sd15 ControlNet is freshly initialised from the global RNG.
    torch.manual_seed(seed)
    if family == "sd15":
        from diffusers import ControlNetModel, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(base_folder / "unet")
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
        zero_init = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    elif family == "flux":
        import inspect

        from diffusers import FluxControlNetModel, FluxTransformer2DModel

        transformer = FluxTransformer2DModel.from_pretrained(base_folder / "transformer")
        # As FluxControlNetModel.from_transformer, but with only the config keys a controlnet takes
        # (no ``_name_or_path``, no ``out_channels``), so its config.json is reproducible and clean.
        accepted = inspect.signature(FluxControlNetModel.__init__).parameters
        config = {k: v for k, v in transformer.config.items() if k in accepted}
        controlnet = FluxControlNetModel(**{**config, "num_layers": 1, "num_single_layers": 1})
        for part in ("pos_embed", "time_text_embed", "context_embedder", "x_embedder", "transformer_blocks", "single_transformer_blocks"):
            getattr(controlnet, part).load_state_dict(getattr(transformer, part).state_dict(), strict=False)
        zero_init = [controlnet.controlnet_x_embedder, *controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks]
    else:
        raise ValueError(f"no tiny controlnet for family {family!r}")
    params = {f"{i:03d}.{name}": p for i, m in enumerate(zero_init) for name, p in m.named_parameters()}
    _randomise_(params, seed, std=0.05)
    controlnet.save_pretrained(folder)
    return folder


_UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _lora_state_dict(model, targets: list[str], rank: int, seed: int) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=targets)
    model = inject_adapter_in_model(config, model)
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    # lora_A ~ N(0, 1/in), lora_B ~ N(0, 0.1^2): a clearly visible but tame change to each layer.
    _randomise_(lora, seed, lambda name, p: p.shape[1] ** -0.5 if "lora_A" in name else 0.1)
    return get_peft_model_state_dict(model)


def write_tiny_lora(path: str | Path, base_folder: str | Path, seed: int = 0, rank: int = 4, text_encoder: bool = True) -> Path:
    """Write a diffusers-format LoRA ``.safetensors`` for the sd15 model at ``base_folder``.

    It adapts the UNet's attention projections (and, with ``text_encoder``, the CLIP text encoder's)
    at ``rank`` with ``lora_alpha = rank`` (scale 1, which is also what diffusers assumes when
    a file carries no alphas). Keys are in the PEFT layout diffusers saves and loads natively,
    ``unet.<module>.lora_A.weight`` / ``text_encoder.<module>.lora_B.weight`` (transformers 5 module
    names: ``text_encoder.encoder.layers.N...``, no ``text_model.``), with no alphas or metadata.
    ``StableDiffusionPipeline.load_lora_weights(path)`` loads it.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    path, base_folder = Path(path), Path(base_folder)
    unet = UNet2DConditionModel.from_pretrained(base_folder / "unet")
    unet_layers = _lora_state_dict(unet, _UNET_LORA_TARGETS, rank, seed)
    text_layers = None
    if text_encoder:
        encoder = CLIPTextModel.from_pretrained(base_folder / "text_encoder")
        text_layers = _lora_state_dict(encoder, _TEXT_LORA_TARGETS, rank, seed + 1)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=path.parent, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, weight_name=path.name
    )
    return path


_WRITERS = {
    "sd15": _write_sd15,
    "sdxl": _write_sdxl,
    "sd3": _write_sd3,
    "flux": _write_flux,
    "flux-schnell": _write_flux_schnell,
    "flux2-klein": lambda folder, seed: importlib.import_module("legodiffusion.models.tiny_flux2").write_flux2_klein(folder, seed),
    "z-image": write_zimage,
    "z-image-turbo": write_zimage_turbo,
    "qwen-image": write_qwenimage,
}

_EXTRA_WRITERS = {
    "controlnet-sd15": lambda out, base, seed: write_tiny_controlnet(out, base, "sd15", seed),
    "controlnet-flux": lambda out, base, seed: write_tiny_controlnet(out, base, "flux", seed),
    "lora-sd15-a": lambda out, base, seed: write_tiny_lora(out, base, seed + 100),
    "lora-sd15-b": lambda out, base, seed: write_tiny_lora(out, base, seed + 200),
    "lora-sdxl-a": lambda out, base, seed: write_tiny_sdxl_lora(out, base, seed + 300),
    "lora-sdxl-b": lambda out, base, seed: write_tiny_sdxl_lora(out, base, seed + 400),
    "lora-sd3-a": lambda out, base, seed: write_tiny_sd3_lora(out, base, seed + 500),  # transformer and both CLIPs
    "lora-sd3-b": lambda out, base, seed: write_tiny_sd3_lora(out, base, seed + 600, text_encoders=False),
    # the base's text encoders and VAE (same seeds), a 9-channel UNet: as inpainting checkpoints are made
    "sd15-inpainting": lambda out, base, seed: _write_sd15(out, seed, in_channels=9),
    "sdxl-inpainting": lambda out, base, seed: _write_sdxl(out, seed, in_channels=9),
    **tiny_controlnets.WRITERS,
}


def _written(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return path.exists()
    return (path / "model_index.json").exists() or (path / "diffusion_pytorch_model.safetensors").exists()


def write_tiny_models(root: str | Path, seed: int = 0, families=TINY_FAMILIES, extras=tuple(TINY_EXTRAS)) -> dict[str, Path]:
    """Write (or reuse) tiny model folders under ``root``; returns name -> folder (or file).

    ``families`` are pipeline folders (see :data:`TINY_FAMILIES`); ``extras`` are the controlnets
    and LoRA files of :data:`TINY_EXTRAS`, each written only when its base family is among
    ``families``. Anything already present (a folder's ``model_index.json`` or weights, a LoRA
    file) is reused, so repeated calls are cheap. The weights depend only on ``seed``.
    """
    root = Path(root)
    out = {}
    for family in families:
        folder = root / family
        if not _written(folder):
            _WRITERS[family](folder, seed)
        out[family] = folder
    for name in extras:
        base, rel = TINY_EXTRAS[name]
        if base not in out:
            continue
        path = root / rel
        if not _written(path):
            _EXTRA_WRITERS[name](path, out[base], seed)
        out[name] = path
    return out


def write_tiny_flux_lora(path: str | Path, base_folder: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA for the tiny Flux transformer, as ``FluxPipeline.load_lora_weights(path)`` accepts it."""
    return write_transformer_lora(path, base_folder, "FluxPipeline", "FluxTransformer2DModel", seed, rank)
