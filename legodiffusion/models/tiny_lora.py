"""Tiny diffusers-format LoRA files for the SDXL and SD3 tiny models, as their pipelines'
``save_lora_weights`` write them (the sd15 and Flux writers are in :mod:`legodiffusion.models.tiny`).

* SDXL: the UNet's attention projections and both CLIP encoders' (``unet.*``, ``text_encoder.*``,
  ``text_encoder_2.*``), as ``StableDiffusionXLPipeline.save_lora_weights``.
* SD3: the MMDiT's joint attention, image and context streams alike (``transformer.*``), and with
  ``text_encoders`` both CLIP encoders; never T5, which SD3's loader does not patch either.
* SDXL in kohya's layout (:func:`write_tiny_sdxl_kohya_lora`), as most SDXL LoRAs are published.

Ranks and scales are those of :func:`~legodiffusion.models.tiny.write_tiny_lora`: alpha = rank,
no alphas or metadata in the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# SD3's attention: ``to_*`` act on the image tokens, ``add_*_proj`` / ``to_add_out`` on the text
# tokens (the last block, context_pre_only, has no ``to_add_out``), as diffusers' SD3 DreamBooth
# LoRA script targets them.
_SD3_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def _text_layers(base_folder: Path, sub: str, seed: int) -> dict:
    import transformers

    from legodiffusion.models.tiny import _TEXT_LORA_TARGETS, _lora_state_dict

    (cls_name,) = json.loads((base_folder / sub / "config.json").read_text())["architectures"]
    encoder = getattr(transformers, cls_name).from_pretrained(base_folder / sub)
    return _lora_state_dict(encoder, _TEXT_LORA_TARGETS, 4, seed)


def write_tiny_sdxl_lora(path: str | Path, base_folder: str | Path, seed: int = 0) -> Path:
    """A LoRA for the tiny SDXL model at ``base_folder``: UNet and both text encoders."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from legodiffusion.models.tiny import _UNET_LORA_TARGETS, _lora_state_dict

    path, base_folder = Path(path), Path(base_folder)
    unet = UNet2DConditionModel.from_pretrained(base_folder / "unet")
    StableDiffusionXLPipeline.save_lora_weights(
        save_directory=path.parent,
        unet_lora_layers=_lora_state_dict(unet, _UNET_LORA_TARGETS, 4, seed),
        text_encoder_lora_layers=_text_layers(base_folder, "text_encoder", seed + 1),
        text_encoder_2_lora_layers=_text_layers(base_folder, "text_encoder_2", seed + 2),
        weight_name=path.name,
    )
    return path


def write_tiny_sd3_lora(path: str | Path, base_folder: str | Path, seed: int = 0, text_encoders: bool = True) -> Path:
    """A LoRA for the tiny SD3 model at ``base_folder``: the transformer, and with
    ``text_encoders`` the two CLIP encoders."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from legodiffusion.models.tiny import _lora_state_dict

    path, base_folder = Path(path), Path(base_folder)
    transformer = SD3Transformer2DModel.from_pretrained(base_folder / "transformer")
    text = {}
    if text_encoders:
        text = {
            "text_encoder_lora_layers": _text_layers(base_folder, "text_encoder", seed + 1),
            "text_encoder_2_lora_layers": _text_layers(base_folder, "text_encoder_2", seed + 2),
        }
    StableDiffusion3Pipeline.save_lora_weights(
        save_directory=path.parent,
        transformer_lora_layers=_lora_state_dict(transformer, _SD3_TARGETS, 4, seed),
        weight_name=path.name,
        **text,
    )
    return path


def _sgm_key(key: str, layers_per_block: int) -> str:
    """A diffusers SDXL LoRA key in the layout kohya's SDXL trainer names modules: the UNet's
    attention blocks numbered as in SGM's ``input_blocks`` / ``middle_block`` / ``output_blocks``
    (the inverse of diffusers' ``_maybe_map_sgm_blocks_to_diffusers``), CLIP under ``text_model``."""
    if m := re.fullmatch(r"unet\.down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        return f"unet.input_blocks.{1 + int(m[1]) * (layers_per_block + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"unet\.mid_block\.attentions\.0\.(.*)", key):
        return f"unet.middle_block.1.{m[1]}"
    if m := re.fullmatch(r"unet\.up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        return f"unet.output_blocks.{int(m[1]) * (layers_per_block + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"(text_encoder(?:_2)?)\.encoder\.(.*)", key):  # transformers 5 drops CLIPTextModel's text_model
        return f"{m[1]}.text_model.encoder.{m[2]}"
    if key.startswith(("text_encoder.text_model.", "text_encoder_2.text_model.")):
        return key
    raise ValueError(f"no SGM name for LoRA key {key!r}")


def write_tiny_sdxl_kohya_lora(path: str | Path, lora: str | Path, base_folder: str | Path) -> Path:
    """The SDXL LoRA file ``lora`` (diffusers layout, for the model at ``base_folder``) rewritten as
    kohya's SDXL trainer saves LoRAs: ``lora_unet_input_blocks_4_1_...``, ``lora_te1_...``,
    ``lora_te2_...`` with ``lora_down`` / ``lora_up`` and an ``alpha`` (= rank, so the same weights)
    per module. ``StableDiffusionXLPipeline.load_lora_weights`` maps it back with the UNet's config."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    path, base_folder = Path(path), Path(base_folder)
    layers_per_block = json.loads((base_folder / "unet" / "config.json").read_text())["layers_per_block"]
    state = {_sgm_key(k, layers_per_block): v for k, v in load_file(lora).items()}
    save_file(convert_state_dict_to_kohya(state), path)
    return path


def write_transformer_lora(
    path: str | Path, base_folder: str | Path, pipeline: str, transformer: str, seed: int = 0, rank: int = 4, targets=None
) -> Path:
    """A diffusers-format LoRA for the attention projections of the transformer of the tiny
    ``pipeline`` (a diffusers class name) at ``base_folder``, as its ``load_lora_weights(path)``
    accepts it; ``transformer`` names the transformer's class."""
    import diffusers

    from legodiffusion.models.tiny import _UNET_LORA_TARGETS, _lora_state_dict

    path, base_folder = Path(path), Path(base_folder)
    model = getattr(diffusers, transformer).from_pretrained(base_folder / "transformer")
    layers = _lora_state_dict(model, list(targets or _UNET_LORA_TARGETS), rank, seed)
    getattr(diffusers, pipeline).save_lora_weights(save_directory=path.parent, transformer_lora_layers=layers, weight_name=path.name)
    return path
