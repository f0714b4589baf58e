"""ComfyUI API-format prompts mapped onto our built-in workflows.

A prompt is ``{node_id: {"class_type": ..., "inputs": {...}}}`` where an input is a literal or a
link ``[node_id, output_index]``. A graph ends in SaveImage / PreviewImage <- VAEDecode <- a
KSampler or KSamplerAdvanced; where that sampler's latents come from picks the workflow, one
request of it per image of the batch:

* ``EmptyLatentImage`` -> ``<model>-txt2img`` (with LoraLoader and ControlNetApply(Advanced) nodes
  over the checkpoint and the prompt: ``<model>-txt2img+<controlnets>``);
* ``VAEEncode`` of a LoadImage (under ImageScale nodes, applied to the upload) -> ``<model>-img2img``;
* ``SetLatentNoiseMask`` over a VAEEncode, or ``VAEEncodeForInpaint``, with a mask from
  LoadImageMask or LoadImage's MASK -> ``<model>-inpaint`` (inputs ``image``, ``mask``, white =
  repaint, ``strength``). VAEEncodeForInpaint's ``grow_mask_by`` dilates the mask; its grey fill of
  the masked pixels before encoding is not reproduced (the inpaint workflow encodes the image as
  diffusers' inpaint pipeline does);
* ``LatentUpscale`` / ``LatentUpscaleBy`` of a first KSampler over an EmptyLatentImage -> a hires
  fix, ONE request of ``<model>-hires``: the first sampler's steps and seed, the second's as
  ``hires_steps`` / ``strength`` / ``hires_seed``, the upscale's factor and method. Both samplers
  must share the model, prompts, cfg and sampler (our workflow has one of each).

``denoise`` and ``start_at_step`` become a strength as :mod:`.comfy_sampler` says (the same
schedule length and steps run; not ComfyUI's numbers). Anything else is refused up front, naming
the node, so nothing is half-run. Every link is checked to name an existing node and one of its
outputs, and a graph with a cycle is refused naming the nodes on it, before the graph is walked
(iteratively, so no chain is too long to walk).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from legodiffusion.server.comfy_graph import OUTPUTS, SUPPORTED, ComfyError, check_acyclic, check_links, linked
from legodiffusion.server.comfy_images import ImageSource, image_source, mask_source
from legodiffusion.server.comfy_sampler import KARRAS, SAMPLERS, SCHEDULERS, Sampling, read_sampler, read_upscale, same_stage

__all__ = ["OUTPUTS", "SUPPORTED", "SAMPLERS", "KARRAS", "SCHEDULERS", "ComfyError", "ComfyJob", "parse", "to_spec"]

SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
UPSCALE_NODES = ("LatentUpscale", "LatentUpscaleBy")
INPAINT_NODES = ("SetLatentNoiseMask", "VAEEncodeForInpaint")
LATENT_SOURCES = ("EmptyLatentImage", "VAEEncode", *INPAINT_NODES, *UPSCALE_NODES)
#: request inputs that seed noise: batch item i runs with each + i
SEED_INPUTS = ("seed", "hires_seed")


@dataclass
class ComfyJob:
    workflow: str
    inputs: dict[str, Any]
    batch: int
    output_node: str
    model: str = ""
    controlnets: list[str] = field(default_factory=list)  # ControlNet model names, in order
    images: dict[str, ImageSource] = field(default_factory=dict)  # image inputs of the workflow, by name
    batch_node: str = ""  # the EmptyLatentImage node whose batch_size is ``batch``
    kind: str = "txt2img"  # txt2img, img2img, inpaint or hires: the built-in workflow family
    origin: tuple[str, str] | None = None  # the node that chose the workflow (id, class), for refusals

    def inputs_for(self, i: int) -> dict[str, Any]:
        """The inputs of batch item ``i`` (ComfyUI draws one batch from the seed; item i runs with seed + i)."""
        return {**self.inputs, **{k: self.inputs[k] + i for k in SEED_INPUTS if k in self.inputs}}


def _text(prompt: dict, link: Any, where: str, controls: list) -> str:
    """The prompt text behind a conditioning link, collecting ControlNet applications on the way."""
    nid, node = linked(prompt, link, where)
    while node.get("class_type") in ("ControlNetApply", "ControlNetApplyAdvanced"):
        ct = node["class_type"]
        args = node.get("inputs", {})
        cn_id, cn = linked(prompt, args.get("control_net"), f"node {nid} control_net")
        if cn.get("class_type") != "ControlNetLoader":
            raise ComfyError(cn_id, cn.get("class_type"), "control_net must come from ControlNetLoader")
        image = image_source(prompt, args.get("image"), f"node {nid} image")
        if ct == "ControlNetApplyAdvanced" and (args.get("start_percent", 0.0) != 0.0 or args.get("end_percent", 1.0) != 1.0):
            raise ComfyError(nid, ct, "only start_percent=0 and end_percent=1 are supported")
        entry = (PurePath(str(cn["inputs"].get("control_net_name", ""))).stem, image, float(args.get("strength", 1.0)), nid, ct)
        if entry[:3] not in [c[:3] for c in controls]:
            controls.append(entry)
        # ControlNetApplyAdvanced passes its positive on as output 0 and its negative as output 1
        link = args.get("conditioning") if ct == "ControlNetApply" else args.get("negative" if link[1] == 1 else "positive")
        nid, node = linked(prompt, link, f"node {nid} conditioning")
    if node.get("class_type") != "CLIPTextEncode":
        raise ComfyError(nid, node.get("class_type"), f"{where} must come from CLIPTextEncode (or a ControlNetApply over it)")
    text = node.get("inputs", {}).get("text")
    if not isinstance(text, str):
        raise ComfyError(nid, "CLIPTextEncode", "text must be a literal string")
    return text


def _checkpoint(prompt: dict, ks: Sampling, models: Mapping[str, str | None]) -> tuple[str, str]:
    """(checkpoint model name, LoRA patch set) behind a sampler's model link."""
    loras: list[str] = []
    nid, node = linked(prompt, ks.args.get("model"), f"node {ks.node} model")
    while node.get("class_type") == "LoraLoader":
        args = node.get("inputs", {})
        strength = float(args.get("strength_model", 1.0))
        if float(args.get("strength_clip", strength)) != strength:
            raise ComfyError(nid, "LoraLoader", "strength_clip must equal strength_model (one weight per LoRA)")
        loras.append(f"{PurePath(str(args.get('lora_name', ''))).stem}:{strength}")
        nid, node = linked(prompt, args.get("model"), f"node {nid} model")
    if node["class_type"] != "CheckpointLoaderSimple":
        raise ComfyError(nid, node["class_type"], "model must come from CheckpointLoaderSimple")
    model = PurePath(str(node["inputs"].get("ckpt_name", ""))).stem
    if model not in models:
        raise ComfyError(
            nid, "CheckpointLoaderSimple", f"unknown checkpoint {node['inputs'].get('ckpt_name')!r}; available: {sorted(models)}"
        )
    return model, ",".join(loras[::-1])


def _sampler_node(prompt: dict, link: Any, where: str) -> Sampling:
    nid, node = linked(prompt, link, where)
    if node["class_type"] not in SAMPLER_NODES:
        raise ComfyError(nid, node["class_type"], f"{where} must come from KSampler or KSamplerAdvanced")
    return read_sampler(prompt, nid)


def parse(prompt: Any, models: Mapping[str, str | None] | Iterable[str]) -> ComfyJob:
    """Map a ComfyUI API-format prompt onto a request of a built-in workflow. ``models``: the model
    names served, with their families where known (a family picks how a strength rounds)."""
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
    check_acyclic(prompt, check_links(prompt))
    families = dict(models) if isinstance(models, Mapping) else dict.fromkeys(models)
    try:
        return _parse(prompt, families)
    except ComfyError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, ArithmeticError) as exc:  # wrong literal types
        raise ComfyError(None, None, f"malformed prompt: {type(exc).__name__}: {exc}") from None


def _parse(prompt: dict, models: dict[str, str | None]) -> ComfyJob:
    outputs = [nid for nid, n in prompt.items() if n["class_type"] in ("SaveImage", "PreviewImage")]
    if len(outputs) != 1:
        raise ComfyError(None, None, f"expected exactly one SaveImage/PreviewImage node, found {len(outputs)}")
    out = outputs[0]
    dec_id, dec = linked(prompt, prompt[out]["inputs"].get("images"), f"node {out} images")
    if dec["class_type"] != "VAEDecode":
        raise ComfyError(dec_id, dec["class_type"], "images must come from VAEDecode")
    ks = _sampler_node(prompt, dec["inputs"].get("samples"), f"node {dec_id} samples")
    model, loras = _checkpoint(prompt, ks, models)
    controls: list = []
    inputs = {
        "prompt": _text(prompt, ks.args.get("positive"), f"node {ks.node} positive", controls),
        "negative_prompt": _text(prompt, ks.args.get("negative"), f"node {ks.node} negative", controls),
        "steps": ks.steps,
        "guidance_scale": ks.cfg,
        "sampler": ks.sampler,
        "seed": ks.seed,
    }
    if loras:
        inputs["loras"] = loras
    job = ComfyJob(f"{model}-txt2img", inputs, 1, out, model)
    lat_id, lat = linked(prompt, ks.args.get("latent_image"), f"node {ks.node} latent_image")
    ct = lat["class_type"]
    if ct not in LATENT_SOURCES:
        raise ComfyError(lat_id, ct, f"latent_image must come from one of {list(LATENT_SOURCES)}")
    if controls and ct != "EmptyLatentImage":
        raise ComfyError(*controls[0][3:], "ControlNets are supported in text-to-image graphs only")
    if ct == "EmptyLatentImage":
        _empty_latent(job, ks, lat_id, lat)
    elif ct in UPSCALE_NODES:
        _hires(prompt, job, ks, lat_id, models)
    else:
        _edit(prompt, job, ks, lat_id, models[model])
    _controls(job, controls, models)
    return job


def _empty_latent(job: ComfyJob, ks: Sampling, lat_id: str, lat: dict) -> None:
    if not ks.full:
        raise ComfyError(
            ks.node, ks.class_type, "denoise < 1 or start_at_step > 0 needs latents to start from (VAEEncode), not an empty latent"
        )
    args = lat["inputs"]
    job.inputs.update(width=int(args.get("width", 512)), height=int(args.get("height", 512)))
    job.batch, job.batch_node = int(args.get("batch_size", 1)), lat_id


def _edit(prompt: dict, job: ComfyJob, ks: Sampling, lat_id: str, family: str | None) -> None:
    """img2img (VAEEncode) or inpainting (SetLatentNoiseMask, VAEEncodeForInpaint)."""
    lat = prompt[lat_id]
    ct, args = lat["class_type"], lat["inputs"]
    job.origin = (lat_id, ct)
    if ct == "SetLatentNoiseMask":
        job.images["mask"] = mask_source(prompt, args.get("mask"), f"node {lat_id} mask")
        lat_id, lat = linked(prompt, args.get("samples"), f"node {lat_id} samples")
        if lat["class_type"] != "VAEEncode":
            raise ComfyError(lat_id, lat["class_type"], "SetLatentNoiseMask's samples must come from VAEEncode")
        args = lat["inputs"]
    elif ct == "VAEEncodeForInpaint":
        grow = int(args.get("grow_mask_by", 6))
        job.images["mask"] = mask_source(prompt, args.get("mask"), f"node {lat_id} mask", grow)
    _same_checkpoint(prompt, lat_id, args.get("vae"), job.model)
    job.images["image"] = image_source(prompt, args.get("pixels"), f"node {lat_id} pixels")
    job.kind = "inpaint" if "mask" in job.images else "img2img"
    job.workflow = f"{job.model}-{job.kind}"
    job.inputs["strength"] = ks.strength(family)


def _same_checkpoint(prompt: dict, nid: str, link: Any, model: str) -> None:
    """An encoder's VAE must be the sampler's checkpoint's (we encode with the model's own VAE)."""
    vae_id, vae = linked(prompt, link, f"node {nid} vae")
    if vae["class_type"] != "CheckpointLoaderSimple" or link[1] != 2:
        raise ComfyError(vae_id, vae["class_type"], f"node {nid}'s vae must be CheckpointLoaderSimple's VAE output")
    if PurePath(str(vae["inputs"].get("ckpt_name", ""))).stem != model:
        raise ComfyError(nid, prompt[nid]["class_type"], f"the VAE must be the sampler's checkpoint's ({model})")


def _hires(prompt: dict, job: ComfyJob, second: Sampling, up_id: str, models: dict[str, str | None]) -> None:
    """KSampler -> LatentUpscale(By) -> KSampler: one request of the hires workflow."""
    up = prompt[up_id]
    job.origin = (up_id, up["class_type"])
    first = _sampler_node(prompt, up["inputs"].get("samples"), f"node {up_id} samples")
    if _checkpoint(prompt, first, models) != (job.model, job.inputs.get("loras", "")):
        raise ComfyError(
            second.node, second.class_type, f"model differs from the first sampler's (node {first.node}); a hires fix uses one model"
        )
    controls: list = []
    texts = tuple(_text(prompt, first.args.get(k), f"node {first.node} {k}", controls) for k in ("positive", "negative"))
    if controls:
        raise ComfyError(*controls[0][3:], "ControlNets are supported in text-to-image graphs only")
    same_stage(first, second, prompt=(texts[0], job.inputs["prompt"]), negative=(texts[1], job.inputs["negative_prompt"]))
    lat_id, lat = linked(prompt, first.args.get("latent_image"), f"node {first.node} latent_image")
    if lat["class_type"] != "EmptyLatentImage":
        raise ComfyError(lat_id, lat["class_type"], "a hires fix's first sampler must start from EmptyLatentImage")
    _empty_latent(job, first, lat_id, lat)
    scale, method = read_upscale(prompt, up_id, job.inputs["width"], job.inputs["height"])
    job.inputs.update(
        seed=first.seed,
        steps=first.steps,
        hires_seed=second.seed,
        hires_steps=second.steps,
        strength=second.strength(models[job.model]),
        scale=scale,
        upscale_mode=method,
    )
    job.kind, job.workflow = "hires", f"{job.model}-hires"


def _controls(job: ComfyJob, controls: list, models: dict) -> None:
    for i, (name, image, strength, nid, ct) in enumerate(controls):
        if name not in models:
            raise ComfyError(nid, ct, f"unknown ControlNet {name!r}; available: {sorted(models)}")
        suffix = f"_{i}" if i else ""
        job.inputs["control_scale" + suffix] = strength
        job.images["control_image" + suffix] = image
    job.controlnets = [c[0] for c in controls]
    if job.controlnets:
        job.workflow = f"{job.model}-txt2img+" + "+".join(job.controlnets)


def to_spec(prompt: Any, family: str = "sd") -> dict:
    """The workflow spec a prompt maps to, with the prompt's values as the inputs' defaults."""
    from legodiffusion.workflow.catalog import BUILTIN_WORKFLOWS

    model = None
    if isinstance(prompt, dict):
        for node in prompt.values():
            if isinstance(node, dict) and node.get("class_type") == "CheckpointLoaderSimple":
                model = PurePath(str(node.get("inputs", {}).get("ckpt_name", ""))).stem
    job = parse(prompt, {model: family} if model else {})
    builder = BUILTIN_WORKFLOWS.get(f"{family}-{job.kind}")
    if builder is None:
        raise ComfyError(*(job.origin or (None, None)), f"no built-in {job.kind} workflow for the {family} family")
    spec = builder(model, name=job.workflow, **({"controlnets": tuple(job.controlnets)} if job.controlnets else {})).to_json()
    for name, value in job.inputs.items():
        if name in spec["inputs"]:
            spec["inputs"][name]["default"] = value
            spec["inputs"][name].pop("default_from", None)  # the graph's own value, not another input's
    return spec
