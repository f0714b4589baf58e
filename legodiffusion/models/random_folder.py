"""A model folder for a full-size architecture with random weights: its configs, offline
tokenizers and scheduler in diffusers' layout, and no weight files.

Everything that reads a model folder (the catalogue, ``pipeline_config``, the server's model scan,
the profiler) reads this one as it reads a real checkpoint; only loading a component differs: it is
built at full size with its class's random initialisation on the device that asks for it
(:func:`legodiffusion.models.architectures.build`), in the dtype the precision gives it. This is
how full-size models are profiled and served on a GPU where no checkpoint can be downloaded
(``legodiffusion profile --architecture flux-dev --device cuda``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legodiffusion.models.components import DENOISER, TEXT_ENCODERS

#: the file that marks a folder as random-weight, naming its architecture and seed
MARKER = "random_weights.json"
PIPELINES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _config(spec) -> dict:
    cfg = dict(spec.config)
    return {"_class_name": spec.class_name, **cfg} if spec.library == "diffusers" else {"architectures": [spec.class_name], **cfg}


def write_folder(name: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the random-weight folder of architecture ``name`` (idempotent)."""
    from legodiffusion.models import architectures as archs

    arch = archs.architecture(name)
    folder = Path(folder)
    if arch.base is not None:  # a ControlNet: a single model, as ControlNet checkpoints are saved
        (spec,) = archs.module_specs(name, "controlnet")
        _write_json(folder / "config.json", _config(spec))
        _write_json(folder / MARKER, {"architecture": name, "seed": seed})
        return folder
    index: dict[str, Any] = {"_class_name": PIPELINES[arch.family], "force_zeros_for_empty_prompt": arch.force_zeros_for_empty_prompt}
    den = archs.module_specs(name, "denoiser")[0]
    _write_json(folder / DENOISER[arch.family] / "config.json", _config(den))
    index[DENOISER[arch.family]] = [den.library, den.class_name]
    (vae,) = archs.module_specs(name, "vae")
    _write_json(folder / "vae" / "config.json", _config(vae))
    index["vae"] = [vae.library, vae.class_name]
    for (tok_sub, enc_sub), spec in zip(TEXT_ENCODERS[arch.family], archs.module_specs(name, "text_encoder"), strict=True):
        _write_json(folder / enc_sub / "config.json", _config(spec))
        tokenizer = archs.tokenizer_for(spec)
        tokenizer.save_pretrained(folder / tok_sub)
        index[enc_sub] = [spec.library, spec.class_name]
        index[tok_sub] = ["transformers", type(tokenizer).__name__]
    sched = arch.scheduler
    _write_json(folder / "scheduler" / "scheduler_config.json", _config(sched))
    index["scheduler"] = ["diffusers", sched.class_name]
    _write_json(folder / "model_index.json", index)
    _write_json(folder / MARKER, {"architecture": name, "seed": seed})
    return folder


def is_random(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).exists()


def build_component(folder: str | Path, component: str, dtype, device: str) -> Any:
    """``component`` of a random-weight folder, built at full size on ``device`` in ``dtype``."""
    from legodiffusion.models import architectures as archs

    marker = json.loads((Path(folder) / MARKER).read_text())
    return archs.build(marker["architecture"], component, device, dtype, seed=int(marker.get("seed", 0)))
