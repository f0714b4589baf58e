"""What a server serves: every model under a folder, and a built-in workflow per base model."""

from __future__ import annotations

import json
from pathlib import Path

from legodiffusion.models.components import family_of
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


def builtin_workflows(models: dict[str, str]) -> list:
    """``<model>-txt2img`` for every pipeline model."""
    specs = []
    for name, folder in models.items():
        folder = Path(folder)
        if not (folder / "model_index.json").exists():
            continue
        family = family_of(folder)
        if family == "flux":
            guided = json.loads((folder / "transformer" / "config.json").read_text()).get("guidance_embeds", True)
            specs.append(flux_txt2img(name, name=f"{name}-txt2img", schnell=not guided))
        else:
            specs.append(_BUILDERS[family](name, name=f"{name}-txt2img"))
    return specs
