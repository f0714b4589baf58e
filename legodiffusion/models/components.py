"""Loading model components from diffusers-format folders, for every supported family.

A *component* is the unit of residency: ``(model name, component)`` such as ``("sd15",
"denoiser")``. Classes are taken from the folder's ``model_index.json``, exactly as
``DiffusionPipeline`` does, so a real checkpoint folder loads through the same path as the tiny
test models. Families: ``sd`` (1.x/2.x), ``sdxl``, ``sd3`` (3 and 3.5), ``flux``, ``flux2`` (FLUX.2-klein),
``zimage`` (Z-Image, Z-Image-Turbo), ``qwenimage`` (Qwen-Image).
"""

from __future__ import annotations

import importlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from legodiffusion.ops.sampling import PACKED_FAMILIES

FAMILY_OF_PIPELINE = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionControlNetPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusionXLControlNetPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "FluxControlNetPipeline": "flux",
    "Flux2KleinPipeline": "flux2",
    "ZImagePipeline": "zimage",
    "QwenImagePipeline": "qwenimage",
}

#: (tokenizer, text encoder) sub-folders per family, in the order the pipelines use them.
TEXT_ENCODERS = {
    "sd": [("tokenizer", "text_encoder")],
    "sdxl": [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")],
    "sd3": [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3")],
    "flux": [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")],
    "flux2": [("tokenizer", "text_encoder")],
    "zimage": [("tokenizer", "text_encoder")],
    "qwenimage": [("tokenizer", "text_encoder")],
}
DENOISER = {
    "sd": "unet",
    "sdxl": "unet",
    "sd3": "transformer",
    "flux": "transformer",
    "flux2": "transformer",
    "zimage": "transformer",
    "qwenimage": "transformer",
}


@dataclass
class TextEncoders:
    """A family's tokenizers and text encoders; an entry is None where the folder omits it
    (SD3 without T5)."""

    family: str
    pairs: list[tuple[Any, Any] | None]
    force_zeros_for_empty_prompt: bool = False
    joint_attention_dim: int = 0  # SD3: width of the zero T5 embedding when T5 is absent

    @property
    def device(self) -> torch.device:
        return next(p for p in self.pairs if p is not None)[1].device

    def modules(self) -> list[torch.nn.Module]:
        return [p[1] for p in self.pairs if p is not None]


@dataclass
class Denoiser:
    """The base model (UNet or transformer) with the facts its callers need."""

    family: str
    module: Any
    vae_scale_factor: int

    def modules(self) -> list[torch.nn.Module]:
        return [self.module]


@dataclass(frozen=True)
class PipelineConfig:
    """Cheap facts ops need without loading weights."""

    family: str
    latent_channels: int
    vae_scale_factor: int
    default_size: int
    scheduler_config: dict
    text_length: int  # tokens per prompt embedding (CLIP)
    text_dim: int  # width of the prompt embedding the denoiser reads
    pooled_dim: int = 0
    patch_size: int = 1
    dtype: torch.dtype = torch.float32  # the denoiser's: latents are drawn and kept in it


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def model_index(folder: Path) -> dict:
    path = Path(folder) / "model_index.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a diffusers model folder (no model_index.json)")
    return _json(path)


def is_pipeline(folder: str | Path) -> bool:
    """A pipeline folder (``model_index.json``), as opposed to a model saved on its own."""
    return (Path(folder) / "model_index.json").exists()


def family_or_none(folder: str | Path) -> str | None:
    """The family of a pipeline folder; None for a model saved on its own (a ControlNet)."""
    return family_of(Path(folder)) if is_pipeline(folder) else None


def family_of(folder: Path) -> str:
    name = model_index(folder).get("_class_name", "")
    try:
        return FAMILY_OF_PIPELINE[name]
    except KeyError:
        raise ValueError(f"{folder}: unsupported pipeline {name!r}; supported: {sorted(FAMILY_OF_PIPELINE)}") from None


def _present(folder: Path, sub: str) -> bool:
    entry = model_index(folder).get(sub)
    return bool(entry) and entry[0] is not None and (folder / sub).exists()


def _class_for(folder: Path, sub: str):
    entry = model_index(folder).get(sub)
    if not entry or entry[0] is None:
        raise FileNotFoundError(f"{folder} has no {sub!r} component in model_index.json")
    library, cls_name = entry
    return getattr(importlib.import_module(library), cls_name)


def _quiet() -> None:
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def _dtype_kwargs(cls, dtype) -> dict:
    """How a class takes its load dtype, as ``DiffusionPipeline`` passes it: ``dtype`` for
    transformers models, ``torch_dtype`` for diffusers models, nothing for tokenizers."""
    if dtype is None or not issubclass(cls, torch.nn.Module):
        return {}
    return {"dtype": dtype} if cls.__module__.startswith("transformers") else {"torch_dtype": dtype}


def from_pretrained(folder: Path, sub: str, dtype=None):
    _quiet()
    cls = _class_for(folder, sub)
    obj = cls.from_pretrained(folder / sub, **_dtype_kwargs(cls, dtype))
    if isinstance(obj, torch.nn.Module):
        obj.eval().requires_grad_(False)
    return obj


def _vae_scale(folder: Path) -> int:
    cfg = _json(folder / "vae" / "config.json")
    if "temperal_downsample" in cfg:  # Qwen-Image's 3D VAE halves the size once per (temporal) downsampling stage
        return 2 ** len(cfg["temperal_downsample"])
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def _text_encoders(folder: Path, dtype=None) -> TextEncoders:
    family = family_of(folder)
    pairs = []
    for tok, enc in TEXT_ENCODERS[family]:
        pairs.append((from_pretrained(folder, tok), from_pretrained(folder, enc, dtype)) if _present(folder, enc) else None)
    if pairs[0] is None and family != "sd3":
        raise FileNotFoundError(f"{folder}: text encoder missing")
    index = model_index(folder)
    joint = _json(folder / "transformer" / "config.json").get("joint_attention_dim", 0) if family == "sd3" else 0
    return TextEncoders(family, pairs, bool(index.get("force_zeros_for_empty_prompt", False)), joint)


def _denoiser(folder: Path, dtype=None) -> Denoiser:
    family = family_of(folder)
    return Denoiser(family, from_pretrained(folder, DENOISER[family], dtype), _vae_scale(folder))


def _pooled_dim(den_cfg: dict) -> int:
    """Width of the pooled text embedding: SDXL's UNet reads it beside six time ids, each embedded
    to ``addition_time_embed_dim``, in one ``projection_class_embeddings_input_dim``."""
    if den_cfg.get("pooled_projection_dim"):
        return int(den_cfg["pooled_projection_dim"])
    added = den_cfg.get("projection_class_embeddings_input_dim") or 0
    return int(added - 6 * (den_cfg.get("addition_time_embed_dim") or 0)) if added else 0


def pipeline_config(folder: Path, dtype=None) -> PipelineConfig:
    """The folder's cheap facts; ``dtype`` is the denoiser's, which the latents take."""
    family = family_of(folder)
    den_cfg = _json(folder / DENOISER[family] / "config.json")
    # FLUX.2 latents are held 2x2-patchified (ops/family_flux2.py): one latent cell per 2 x the VAE factor
    scale = _vae_scale(folder) * (2 if family == "flux2" else 1)
    tok_path = folder / "tokenizer" / "tokenizer_config.json"
    text_length = _json(tok_path).get("model_max_length", 77) if tok_path.exists() else 77
    # what the denoiser predicts: an inpainting UNet reads more channels (mask, masked image) than that
    channels = den_cfg["in_channels"] // 4 if family in PACKED_FAMILIES else den_cfg.get("out_channels") or den_cfg["in_channels"]
    # Flux, FLUX.2 and Qwen-Image default to 1024 px (128 latent px at x8; their transformers have no sample_size);
    # Z-Image reads its sample_size, 128 where the config has none
    default_size = 128 * _vae_scale(folder) if family in (*PACKED_FAMILIES, "flux2") else den_cfg.get("sample_size", 128) * scale
    text_dim = den_cfg.get("cross_attention_dim") or den_cfg.get("joint_attention_dim") or den_cfg.get("cap_feat_dim")
    return PipelineConfig(
        family=family,
        latent_channels=channels,
        vae_scale_factor=scale,
        default_size=default_size,
        scheduler_config=_json(folder / "scheduler" / "scheduler_config.json"),
        text_length=min(int(text_length), 77),
        text_dim=int(text_dim),
        pooled_dim=_pooled_dim(den_cfg),
        patch_size=int(den_cfg.get("patch_size") or den_cfg.get("all_patch_size", [1])[0]),
        # Z-Image draws and keeps its latents in fp32 whatever its transformer's dtype (ZImagePipeline.prepare_latents)
        dtype=torch.float32 if family == "zimage" else dtype or torch.float32,
    )


def _single_model(folder: Path, dtype=None):
    """A model saved on its own (``config.json`` naming its class), such as a ControlNet."""
    _quiet()
    cls_name = _json(folder / "config.json")["_class_name"]
    import diffusers

    cls = getattr(diffusers, cls_name)
    obj = cls.from_pretrained(folder, **_dtype_kwargs(cls, dtype))
    return obj.eval().requires_grad_(False)


LOADERS = {
    "controlnet": _single_model,
    "text_encoder": _text_encoders,
    "denoiser": _denoiser,
    "vae": lambda f, dtype=None: from_pretrained(f, "vae", dtype),
    "config": pipeline_config,
}

# from_pretrained patches torch.nn.Module globally while it builds empty (meta) modules; two
# threads loading at once can leave the patch in place for good. Loads in a process are serialised.
_LOAD_LOCK = threading.Lock()


def load_component(folder: str | Path, component: str, precision=None, device: str = "cpu") -> Any:
    """``component`` of the model in ``folder``, its weights in the dtype ``precision`` (a
    :class:`~legodiffusion.models.precision.Precision`; default ``auto``) gives it on ``device``."""
    from legodiffusion.models.precision import Precision

    try:
        loader = LOADERS[component]
    except KeyError:
        raise KeyError(f"unknown component {component!r}; known: {sorted(LOADERS)}") from None
    from legodiffusion.models import random_folder

    folder = Path(folder)
    dtype = (precision or Precision()).dtype(component, family_or_none(folder), device)
    with _LOAD_LOCK:
        if component != "config" and random_folder.is_random(folder):
            return random_folder.build_component(folder, component, dtype, device)
        return loader(folder, dtype)


def modules_of(obj: Any) -> list[torch.nn.Module]:
    if hasattr(obj, "modules") and not isinstance(obj, torch.nn.Module):
        return obj.modules()
    return [obj] if isinstance(obj, torch.nn.Module) else []


def component_bytes(obj: Any) -> int:
    """Weight memory of a loaded component (parameters and buffers)."""
    total = 0
    for m in modules_of(obj):
        total += sum(t.numel() * t.element_size() for t in m.parameters())
        total += sum(t.numel() * t.element_size() for t in m.buffers())
    return total
