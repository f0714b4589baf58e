"""What a server serves: every model under a folder, and a built-in workflow per base model."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path

from legodiffusion.models.components import family_of, family_or_none, is_pipeline
from legodiffusion.workflow.flux import flux_img2img, flux_inpaint, flux_txt2img
from legodiffusion.workflow.flux2 import flux2_klein_txt2img, is_distilled
from legodiffusion.workflow.hires import flux_hires, sd3_hires, sd_hires, sdxl_hires
from legodiffusion.workflow.qwenimage import qwenimage_txt2img
from legodiffusion.workflow.stable import IMG2IMG, INPAINT, TXT2IMG
from legodiffusion.workflow.zimage import zimage_for

#: families whose _BUILDERS entry takes ControlNets (Flux's builder is called on its own)
CONTROLNET_FAMILIES = frozenset({"sd", "sdxl", "sd3"})
_BUILDERS = {**TXT2IMG, "zimage": zimage_for, "qwenimage": qwenimage_txt2img}
#: families served by their text-to-image workflow alone (no edit or hires graph yet)
_TXT2IMG_ONLY = frozenset({"flux2", "zimage", "qwenimage"})
_HIRES = {"sd": sd_hires, "sdxl": sdxl_hires, "sd3": sd3_hires}


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
        return flux_txt2img(model, name=name, schnell=_schnell(folder), controlnets=controlnets)
    if family == "flux2" and not controlnets:
        return flux2_klein_txt2img(model, name=name, distilled=is_distilled(folder))
    if controlnets and family not in CONTROLNET_FAMILIES:
        raise ValueError(f"ControlNets are supported for the {', '.join(sorted(CONTROLNET_FAMILIES | {'flux'}))} families, not {family}")
    return _BUILDERS[family](model, name=name, **({"controlnets": controlnets} if controlnets else {}))


def controlnet_family(folder: str | Path) -> str | None:
    """The family a ControlNet folder steers (SDXL's ``ControlNetModel`` reads ``text_time``
    added conditioning, SD 1.x/2.x's none); None for a folder that is no ControlNet."""
    config = Path(folder) / "config.json"
    if is_pipeline(folder) or not config.exists():
        return None
    cfg = json.loads(config.read_text())
    cls = cfg.get("_class_name")
    if cls == "ControlNetModel":
        return "sdxl" if cfg.get("addition_embed_type") == "text_time" else "sd"
    return {"SD3ControlNetModel": "sd3", "FluxControlNetModel": "flux"}.get(cls)


def _schnell(folder: Path) -> bool:
    return not json.loads((folder / "transformer" / "config.json").read_text()).get("guidance_embeds", True)


def _edit_for(folder: str | Path, model: str, name: str | None, kind: str, builders: dict, flux_builder, **kwargs):
    """The built-in ``kind`` workflow (``<model>-<kind>`` unless named) for a model folder's family."""
    folder = Path(folder)
    family = family_of(folder)
    name = name or f"{model}-{kind}"
    if family == "flux":
        return flux_builder(model, name=name, schnell=_schnell(folder))
    return builders[family](model, name=name, **kwargs)


def img2img_for(folder: str | Path, model: str, name: str | None = None):
    """The built-in image-to-image workflow for a model folder's family."""
    return _edit_for(folder, model, name, "img2img", IMG2IMG, flux_img2img)


def inpaint_for(folder: str | Path, model: str, name: str | None = None):
    """The built-in inpainting workflow for a model folder's family; for an inpainting checkpoint
    (a UNet reading the mask and masked image: 9 input channels) the graph that feeds it them."""
    nine = {"nine_channel": True} if _nine_channel(Path(folder)) else {}
    return _edit_for(folder, model, name, "inpaint", INPAINT, flux_inpaint, **nine)


def _nine_channel(folder: Path) -> bool:
    unet = folder / "unet" / "config.json"
    return unet.exists() and json.loads(unet.read_text()).get("in_channels") == 9


def hires_for(folder: str | Path, model: str, name: str | None = None):
    """The built-in two-stage hires workflow for a model folder's family."""
    return _edit_for(folder, model, name, "hires", _HIRES, flux_hires)


def workflows_for(folder: str | Path, model: str) -> list:
    """Every built-in workflow of one pipeline model: ``<model>-txt2img``, ``<model>-img2img``,
    ``<model>-inpaint`` and ``<model>-hires``; an inpainting checkpoint (9-channel UNet) only
    inpaints, as in diffusers; a family without edit workflows here (FLUX.2, Z-Image, Qwen-Image) only draws."""
    if _nine_channel(Path(folder)):
        return [inpaint_for(folder, model)]
    if family_of(Path(folder)) in _TXT2IMG_ONLY:
        return [txt2img_for(folder, model)]
    return [txt2img_for(folder, model), img2img_for(folder, model), inpaint_for(folder, model), hires_for(folder, model)]


def builtin_workflows(models: dict[str, str]) -> list:
    """The built-in workflows (:func:`workflows_for`) of every pipeline model."""
    return [wf for name, folder in models.items() if is_pipeline(folder) for wf in workflows_for(folder, name)]


@lru_cache(maxsize=1024)
def _family(folder: str) -> str | None:
    return family_or_none(folder)


class ModelFamilies(Mapping):
    """A catalog's model names with their families (None for a model that is no pipeline), each
    read from its folder the first time it is asked for."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog

    def __getitem__(self, name: str) -> str | None:
        return _family(str(self.catalog.folder(name)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.catalog.names())

    def __len__(self) -> int:
        return len(self.catalog.names())

    def __contains__(self, name: object) -> bool:
        return name in self.catalog
