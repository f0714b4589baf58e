"""What a server serves: every model under a folder, and a built-in workflow per base model."""

from __future__ import annotations

import json
from pathlib import Path

from legodiffusion.models.components import family_of, is_pipeline
from legodiffusion.workflow.catalog import flux_txt2img, sd3_txt2img, sd_txt2img, sdxl_txt2img

_BUILDERS = {"sd": sd_txt2img, "sdxl": sdxl_txt2img, "sd3": sd3_txt2img}


def models_under(root: Path) -> dict[str, str]:
    """Sub-folders with ``model_index.json`` (pipelines) or ``config.json`` (ControlNets), and
    ``*.safetensors`` files (LoRAs), by name."""
    out = {}
    for path in sorted(Path(root).iterdir()):
        if path.is_dir() and ((path / "model_index.json").exists() or (path / "config.json").exists()):
            out[path.name] = str(path)
        elif path.suffix == ".safetensors":
            out[path.stem] = str(path)
    return out


def txt2img_for(folder: str | Path, model: str, name: str | None = None, controlnets: tuple[str, ...] = ()):
    """The built-in text-to-image workflow for a model folder's family (Flux dev or schnell by
    whether its transformer has a guidance embedding)."""
    folder = Path(folder)
    family = family_of(folder)
    name = name or f"{model}-txt2img"
    if family == "flux":
        guided = json.loads((folder / "transformer" / "config.json").read_text()).get("guidance_embeds", True)
        return flux_txt2img(model, name=name, schnell=not guided, controlnets=controlnets)
    if controlnets and family != "sd":
        raise ValueError("ControlNets are supported for the SD and Flux families")
    return _BUILDERS[family](model, name=name, **({"controlnets": controlnets} if controlnets else {}))


def builtin_workflows(models: dict[str, str]) -> list:
    """``<model>-txt2img`` for every pipeline model."""
    return [txt2img_for(folder, name) for name, folder in models.items() if is_pipeline(folder)]
