"""ComfyUI API-format prompts mapped onto our workflows.

A prompt is ``{node_id: {"class_type": ..., "inputs": {...}}}`` where an input is a literal or a
link ``[node_id, output_index]``. The text-to-image graph (CheckpointLoaderSimple, CLIPTextEncode,
EmptyLatentImage, KSampler / KSamplerAdvanced, VAEDecode, SaveImage / PreviewImage) becomes a
request of the checkpoint's built-in ``<model>-txt2img`` workflow; anything else is refused up
front, naming the node, so nothing is half-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

SUPPORTED = {
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "KSamplerAdvanced",
    "VAEDecode",
    "SaveImage",
    "PreviewImage",
    "LoraLoader",
    "ControlNetLoader",
    "ControlNetApply",
    "ControlNetApplyAdvanced",
    "LoadImage",
}
SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_ancestral", "ddim": "ddim", "dpmpp_2m": "dpmpp_2m"}
KARRAS = {"euler": "euler_karras", "dpmpp_2m": "dpmpp_2m_karras"}
SCHEDULERS = {"normal", "simple", "ddim_uniform", "karras"}


class ComfyError(ValueError):
    def __init__(self, node: str | None, class_type: str | None, message: str) -> None:
        super().__init__(message)
        self.node, self.class_type, self.message = node, class_type, message

    def node_errors(self) -> dict:
        if self.node is None:
            return {}
        return {self.node: {"errors": [{"type": "unsupported", "message": self.message}], "class_type": self.class_type}}


@dataclass
class ComfyJob:
    workflow: str
    inputs: dict[str, Any]
    batch: int
    output_node: str
    model: str = ""
    controlnets: list[str] = field(default_factory=list)  # ControlNet model names, in order
    images: list[str] = field(default_factory=list)  # uploaded image names, one per ControlNet


def _node(prompt: dict, link: Any, where: str) -> tuple[str, dict]:
    if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in prompt):
        raise ComfyError(None, None, f"{where}: expected a link [node_id, output_index] to an existing node, got {link!r}")
    nid = str(link[0])
    return nid, prompt[nid]


def _text(prompt: dict, link: Any, where: str, controls: list) -> str:
    """The prompt text behind a conditioning link, collecting ControlNet applications on the way."""
    nid, node = _node(prompt, link, where)
    ct = node.get("class_type")
    if ct in ("ControlNetApply", "ControlNetApplyAdvanced"):
        args = node.get("inputs", {})
        cn_id, cn = _node(prompt, args.get("control_net"), f"node {nid} control_net")
        if cn.get("class_type") != "ControlNetLoader":
            raise ComfyError(cn_id, cn.get("class_type"), "control_net must come from ControlNetLoader")
        img_id, img = _node(prompt, args.get("image"), f"node {nid} image")
        if img.get("class_type") != "LoadImage":
            raise ComfyError(img_id, img.get("class_type"), "a control image must come from LoadImage")
        if ct == "ControlNetApplyAdvanced" and (args.get("start_percent", 0.0) != 0.0 or args.get("end_percent", 1.0) != 1.0):
            raise ComfyError(nid, ct, "only start_percent=0 and end_percent=1 are supported")
        entry = (
            PurePath(str(cn["inputs"].get("control_net_name", ""))).stem,
            str(img["inputs"].get("image", "")),
            float(args.get("strength", 1.0)),
        )
        if entry not in controls:
            controls.append(entry)
        return _text(prompt, args.get("conditioning") or args.get("positive"), f"node {nid} conditioning", controls)
    if ct != "CLIPTextEncode":
        raise ComfyError(nid, ct, f"{where} must come from CLIPTextEncode (or a ControlNetApply over it)")
    text = node.get("inputs", {}).get("text")
    if not isinstance(text, str):
        raise ComfyError(nid, "CLIPTextEncode", "text must be a literal string")
    return text


def _model(prompt: dict, link: Any, where: str, loras: list) -> tuple[str, dict]:
    """The checkpoint node behind a model link, collecting LoraLoaders on the way."""
    nid, node = _node(prompt, link, where)
    if node.get("class_type") == "LoraLoader":
        args = node.get("inputs", {})
        strength = float(args.get("strength_model", 1.0))
        if float(args.get("strength_clip", strength)) != strength:
            raise ComfyError(nid, "LoraLoader", "strength_clip must equal strength_model (one weight per LoRA)")
        loras.append(f"{PurePath(str(args.get('lora_name', ''))).stem}:{strength}")
        return _model(prompt, args.get("model"), f"node {nid} model", loras)
    return nid, node


def parse(prompt: Any, models: set[str]) -> ComfyJob:
    """Map a ComfyUI API-format prompt onto a request of a built-in workflow."""
    if not isinstance(prompt, dict) or not prompt:
        raise ComfyError(None, None, "prompt must be a non-empty object of nodes")
    for nid, node in prompt.items():
        ct = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(ct, str) or ct not in SUPPORTED:
            raise ComfyError(
                str(nid), ct if isinstance(ct, str) else None, f"node {nid} ({ct}) is not supported; supported: {sorted(SUPPORTED)}"
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise ComfyError(str(nid), ct, f"node {nid}: inputs must be an object")
    try:
        return _parse(prompt, models)
    except ComfyError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:  # wrong literal types
        raise ComfyError(None, None, f"malformed prompt: {type(exc).__name__}: {exc}") from None


def _parse(prompt: dict, models: set[str]) -> ComfyJob:
    outputs = [nid for nid, n in prompt.items() if n["class_type"] in ("SaveImage", "PreviewImage")]
    if len(outputs) != 1:
        raise ComfyError(None, None, f"expected exactly one SaveImage/PreviewImage node, found {len(outputs)}")
    out = outputs[0]
    dec_id, dec = _node(prompt, prompt[out]["inputs"].get("images"), f"node {out} images")
    if dec["class_type"] != "VAEDecode":
        raise ComfyError(dec_id, dec["class_type"], "images must come from VAEDecode")
    ks_id, ks = _node(prompt, dec["inputs"].get("samples"), f"node {dec_id} samples")
    if ks["class_type"] not in ("KSampler", "KSamplerAdvanced"):
        raise ComfyError(ks_id, ks["class_type"], "samples must come from KSampler or KSamplerAdvanced")
    args = ks["inputs"]
    loras: list[str] = []
    ck_id, ck = _model(prompt, args.get("model"), f"node {ks_id} model", loras)
    if ck["class_type"] != "CheckpointLoaderSimple":
        raise ComfyError(ck_id, ck["class_type"], "model must come from CheckpointLoaderSimple")
    model = PurePath(str(ck["inputs"].get("ckpt_name", ""))).stem
    if model not in models:
        raise ComfyError(
            ck_id, "CheckpointLoaderSimple", f"unknown checkpoint {ck['inputs'].get('ckpt_name')!r}; available: {sorted(models)}"
        )
    lat_id, lat = _node(prompt, args.get("latent_image"), f"node {ks_id} latent_image")
    if lat["class_type"] != "EmptyLatentImage":
        raise ComfyError(lat_id, lat["class_type"], "latent_image must come from EmptyLatentImage (img2img is not supported)")
    sampler = SAMPLERS.get(args.get("sampler_name"))
    if sampler is None:
        raise ComfyError(ks_id, ks["class_type"], f"sampler {args.get('sampler_name')!r} is not supported; supported: {sorted(SAMPLERS)}")
    if args.get("scheduler", "normal") not in SCHEDULERS:
        raise ComfyError(ks_id, ks["class_type"], f"scheduler {args.get('scheduler')!r} is not supported; supported: {sorted(SCHEDULERS)}")
    if args.get("scheduler") == "karras":
        sampler = KARRAS.get(args.get("sampler_name"))
        if sampler is None:
            raise ComfyError(
                ks_id, ks["class_type"], f"scheduler karras is supported with {sorted(KARRAS)}, not {args.get('sampler_name')!r}"
            )
    if ks["class_type"] == "KSampler":
        seed, denoise = args.get("seed", 0), args.get("denoise", 1.0)
    else:
        seed, denoise = args.get("noise_seed", 0), 1.0
        if args.get("start_at_step", 0) != 0 or args.get("add_noise", "enable") != "enable":
            raise ComfyError(ks_id, "KSamplerAdvanced", "only start_at_step=0 with add_noise=enable is supported")
    if denoise != 1.0:
        raise ComfyError(ks_id, ks["class_type"], "denoise < 1 (img2img) is not supported")
    controls: list = []
    inputs = {
        "prompt": _text(prompt, args.get("positive"), f"node {ks_id} positive", controls),
        "negative_prompt": _text(prompt, args.get("negative"), f"node {ks_id} negative", controls),
        "steps": int(args.get("steps", 20)),
        "guidance_scale": float(args.get("cfg", 7.0)),
        "sampler": sampler,
        "seed": int(seed),
        "width": int(lat["inputs"].get("width", 512)),
        "height": int(lat["inputs"].get("height", 512)),
    }
    if loras:
        inputs["loras"] = ",".join(loras[::-1])
    for i, (_, _, strength) in enumerate(controls):
        inputs["control_scale" + (f"_{i}" if i else "")] = strength
    cns = [c[0] for c in controls]
    for name in cns:
        if name not in models:
            raise ComfyError(None, "ControlNetLoader", f"unknown ControlNet {name!r}; available: {sorted(models)}")
    workflow = f"{model}-txt2img" if not cns else f"{model}-txt2img+" + "+".join(cns)
    return ComfyJob(workflow, inputs, int(lat["inputs"].get("batch_size", 1)), out, model, cns, [c[1] for c in controls])


def to_spec(prompt: Any, family: str = "sd") -> dict:
    """The workflow spec a prompt maps to, with the prompt's values as the inputs' defaults."""
    from legodiffusion.workflow.catalog import flux_txt2img, sd3_txt2img, sd_txt2img, sdxl_txt2img

    model = None
    if isinstance(prompt, dict):
        for node in prompt.values():
            if isinstance(node, dict) and node.get("class_type") == "CheckpointLoaderSimple":
                model = PurePath(str(node.get("inputs", {}).get("ckpt_name", ""))).stem
    job = parse(prompt, {model} if model else set())
    builders = {"sd": sd_txt2img, "sdxl": sdxl_txt2img, "sd3": sd3_txt2img, "flux": flux_txt2img}
    spec = builders[family](model, name=job.workflow).to_json()
    for name, value in job.inputs.items():
        if name in spec["inputs"]:
            spec["inputs"][name]["default"] = value
    return spec
