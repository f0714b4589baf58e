"""LoRA as a patch on a shared, resident base model.

A LoRA file loads once per process into host memory (its state dict). On a worker it is injected
once into the resident module as a named PEFT adapter (cached), and each batch activates exactly
its patch set with its weights, runs, and deactivates it again: requests with different LoRAs share
one copy of the base weights, and only nodes with equal patch sets share a batch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legodiffusion.models.components import Denoiser, TextEncoders

#: the pipeline whose LoRA loader mixin understands each family's checkpoints
_PIPELINES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "flux2": "Flux2KleinPipeline",
    "zimage": "ZImagePipeline",
    "qwenimage": "QwenImagePipeline",
}
_UNET_FAMILIES = ("sd", "sdxl")


def _pipeline_cls(family: str):
    import diffusers

    return getattr(diffusers, _PIPELINES[family])


def load_lora_file(path: Path, family: str = "sd") -> tuple[dict, Any, Any]:
    """(state dict, network alphas, metadata) as ``load_lora_weights`` reads them; for the UNet
    families the state dict as the file has it, converted per component by :func:`inject`."""
    cls = _pipeline_cls(family)
    if family == "flux":  # Flux's loader hands back alphas only when asked for them
        return cls.lora_state_dict(str(path), return_alphas=True, return_lora_metadata=True)
    if family in _UNET_FAMILIES:
        # SD3's loader reads a file as it is, with no format conversion: a kohya file's SGM block
        # numbers map to diffusers' only through the UNet's config, which inject has at hand
        import diffusers

        state_dict, metadata = diffusers.StableDiffusion3Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
        return state_dict, None, metadata
    out = cls.lora_state_dict(str(path), return_lora_metadata=True)
    return out if len(out) == 3 else (out[0], None, out[1])


def _unet_lora(lora: tuple, family: str, unet_config) -> tuple[dict, Any]:
    """A UNet family's LoRA file contents as ``load_lora_weights`` converts them: (state dict,
    network alphas). SDXL passes its UNet's config (kohya files name SGM blocks), SD none."""
    state_dict, _, _ = lora
    config = {"unet_config": unet_config} if family == "sdxl" else {}
    # the conversion pops keys from the dict it is given: a copy keeps the host copy intact
    return _pipeline_cls(family).lora_state_dict(dict(state_dict), **config)


@dataclass
class LoraFile:
    path: Path
    state: tuple | None = None


class PatchSet:
    """Adapters injected into one resident component on one worker."""

    def __init__(self) -> None:
        self.injected: set[str] = set()
        self.lock = threading.Lock()


def inject(obj: Any, name: str, lora: tuple, family: str) -> bool:
    """Add LoRA ``name`` to a resident denoiser or text-encoder bundle as a PEFT adapter;
    False when the LoRA has no weights for it."""
    state_dict, alphas, metadata = lora
    cls = _pipeline_cls(family)
    if family in _UNET_FAMILIES:
        # SDXL's load_lora_weights converts once, with the UNet's config, for all its components; the
        # config renumbers UNet keys only, so converting for the text encoders needs none
        state_dict, alphas = _unet_lora(lora, family, obj.module.config if isinstance(obj, Denoiser) else None)
    if isinstance(obj, Denoiser):
        if family in _UNET_FAMILIES:
            cls.load_lora_into_unet(state_dict, alphas, unet=obj.module, adapter_name=name, metadata=metadata, low_cpu_mem_usage=True)
        else:
            extra = {"network_alphas": alphas} if family == "flux" else {}
            cls.load_lora_into_transformer(
                dict(state_dict), transformer=obj.module, adapter_name=name, metadata=metadata, low_cpu_mem_usage=True, **extra
            )
        return True
    if isinstance(obj, TextEncoders):
        found = False
        # only the encoders the family's load_lora_weights loads (none for FLUX.2, Z-Image and
        # Qwen-Image, whose pipelines load a LoRA's transformer weights alone)
        loadable = cls._lora_loadable_modules
        for prefix, pair in zip(["text_encoder", "text_encoder_2"], obj.pairs):
            if prefix in loadable and pair is not None and any(k.startswith(prefix + ".") for k in state_dict):
                found = True
                cls.load_lora_into_text_encoder(
                    dict(state_dict),
                    alphas,
                    text_encoder=pair[1],
                    prefix=prefix,
                    adapter_name=name,
                    metadata=metadata,
                    low_cpu_mem_usage=True,
                )
        return found
    return False


def _te_modules(obj: TextEncoders) -> list:
    return [p[1] for p in obj.pairs if p is not None and getattr(p[1], "peft_config", None)]


def activate(obj: Any, patches: tuple[tuple[str, float], ...]) -> None:
    """Make exactly ``patches`` active (empty: none) on an injected component."""
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder, set_adapters_for_text_encoder

    names = [n for n, _ in patches]
    weights = [w for _, w in patches]
    if isinstance(obj, Denoiser):
        module = obj.module
        if not getattr(module, "peft_config", None):
            return
        if patches:
            module.enable_lora()
            module.set_adapters(names, weights)
        else:
            module.disable_lora()
    elif isinstance(obj, TextEncoders):
        for te in _te_modules(obj):
            present = [n for n in names if n in te.peft_config]
            if present:
                enable_lora_for_text_encoder(te)
                set_adapters_for_text_encoder(present, te, [w for n, w in patches if n in te.peft_config])
            else:
                disable_lora_for_text_encoder(te)
