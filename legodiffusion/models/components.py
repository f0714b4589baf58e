"""Loading model components from diffusers-format folders.

A *component* is the unit of residency: ``(model name, component)`` such as ``("sd15", "unet")``.
Classes are taken from the folder's ``model_index.json``, exactly as ``DiffusionPipeline`` does, so
a real checkpoint folder loads through the same path as the tiny test models.
"""

from __future__ import annotations

import importlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class TextEncoder:
    tokenizer: Any
    encoder: Any


@dataclass(frozen=True)
class PipelineConfig:
    """Cheap facts ops need without loading weights."""

    latent_channels: int
    vae_scale_factor: int
    default_size: int
    scheduler_config: dict
    text_length: int  # tokens per prompt embedding
    text_dim: int  # width of the prompt embedding the denoiser reads


def _model_index(folder: Path) -> dict:
    path = folder / "model_index.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a diffusers model folder (no model_index.json)")
    return json.loads(path.read_text())


def _class_for(folder: Path, sub: str):
    entry = _model_index(folder).get(sub)
    if not entry or entry[0] is None:
        raise FileNotFoundError(f"{folder} has no {sub!r} component in model_index.json")
    library, cls_name = entry
    return getattr(importlib.import_module(library), cls_name)


def _quiet() -> None:
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def _from_pretrained(folder: Path, sub: str):
    _quiet()
    obj = _class_for(folder, sub).from_pretrained(folder / sub)
    if isinstance(obj, torch.nn.Module):
        obj.eval().requires_grad_(False)
    return obj


def _pipeline_config(folder: Path) -> PipelineConfig:
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    tok_path = folder / "tokenizer" / "tokenizer_config.json"
    text_length = json.loads(tok_path.read_text()).get("model_max_length", 77) if tok_path.exists() else 77
    scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    return PipelineConfig(
        latent_channels=unet_cfg["in_channels"],
        vae_scale_factor=scale,
        default_size=unet_cfg["sample_size"] * scale,
        scheduler_config=sched_cfg,
        text_length=min(int(text_length), 77),
        text_dim=unet_cfg["cross_attention_dim"],
    )


LOADERS = {
    "text_encoder": lambda f: TextEncoder(_from_pretrained(f, "tokenizer"), _from_pretrained(f, "text_encoder")),
    "unet": lambda f: _from_pretrained(f, "unet"),
    "vae": lambda f: _from_pretrained(f, "vae"),
    "config": _pipeline_config,
}


# from_pretrained patches torch.nn.Module globally while it builds empty (meta) modules; two
# threads loading at once can leave the patch in place for good. Loads in a process are serialised.
_LOAD_LOCK = threading.Lock()


def load_component(folder: str | Path, component: str) -> Any:
    try:
        loader = LOADERS[component]
    except KeyError:
        raise KeyError(f"unknown component {component!r}; known: {sorted(LOADERS)}") from None
    with _LOAD_LOCK:
        return loader(Path(folder))


def component_bytes(obj: Any) -> int:
    """Weight memory of a loaded component (parameters and buffers)."""
    modules = [v for v in vars(obj).values()] if isinstance(obj, TextEncoder) else [obj]
    total = 0
    for m in modules:
        if isinstance(m, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in m.parameters())
            total += sum(t.numel() * t.element_size() for t in m.buffers())
    return total
