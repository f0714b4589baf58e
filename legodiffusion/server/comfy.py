"""ComfyUI API-format prompts mapped onto our workflows.

A prompt is ``{node_id: {"class_type": ..., "inputs": {...}}}`` where an input is a literal or a
link ``[node_id, output_index]``. The text-to-image graph (CheckpointLoaderSimple, CLIPTextEncode,
EmptyLatentImage, KSampler / KSamplerAdvanced, VAEDecode, SaveImage / PreviewImage) becomes a
request of the checkpoint's built-in ``<model>-txt2img`` workflow; anything else is refused up
front, naming the node, so nothing is half-run. Every link is checked to name an existing node and
one of its outputs, and a graph with a cycle is refused naming the nodes on it, before the graph is
walked (iteratively, so no chain is too long to walk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

OUTPUTS = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "CLIPTextEncode": ("CONDITIONING",),
    "EmptyLatentImage": ("LATENT",),
    "KSampler": ("LATENT",),
    "KSamplerAdvanced": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "SaveImage": (),
    "PreviewImage": (),
    "LoraLoader": ("MODEL", "CLIP"),
    "ControlNetLoader": ("CONTROL_NET",),
    "ControlNetApply": ("CONDITIONING",),
    "ControlNetApplyAdvanced": ("CONDITIONING", "CONDITIONING"),
    "LoadImage": ("IMAGE", "MASK"),
}
"""The supported node classes and their outputs, as ComfyUI numbers them."""
SUPPORTED = set(OUTPUTS)
SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_ancestral", "ddim": "ddim", "dpmpp_2m": "dpmpp_2m"}
KARRAS = {"euler": "euler_karras", "dpmpp_2m": "dpmpp_2m_karras"}
SCHEDULERS = {"normal", "simple", "ddim_uniform", "karras"}


class ComfyError(ValueError):
    """A prompt we refuse (400). ``nodes`` are the nodes at fault, by id, with their class types."""

    def __init__(
        self,
        node: str | None,
        class_type: str | None,
        message: str,
        code: str = "unsupported_workflow",
        path: str | None = None,
        nodes: dict[str, str | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.node, self.class_type, self.message, self.code = node, class_type, message, code
        self.path = path or (f"prompt.{node}" if node is not None else "prompt")
        self.nodes = nodes if nodes is not None else ({} if node is None else {node: class_type})

    def node_errors(self) -> dict:
        kind = "unsupported" if self.code == "unsupported_workflow" else self.code
        return {nid: {"errors": [{"type": kind, "message": self.message}], "class_type": ct} for nid, ct in self.nodes.items()}


@dataclass
class ComfyJob:
    workflow: str
    inputs: dict[str, Any]
    batch: int
    output_node: str
    model: str = ""
    controlnets: list[str] = field(default_factory=list)  # ControlNet model names, in order
    images: list[str] = field(default_factory=list)  # uploaded image names, one per ControlNet
    batch_node: str = ""  # the EmptyLatentImage node whose batch_size is ``batch``


def _node(prompt: dict, link: Any, where: str) -> tuple[str, dict]:
    if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in prompt):
        raise ComfyError(None, None, f"{where}: expected a link [node_id, output_index] to an existing node, got {link!r}")
    nid = str(link[0])
    return nid, prompt[nid]


def _text(prompt: dict, link: Any, where: str, controls: list) -> str:
    """The prompt text behind a conditioning link, collecting ControlNet applications on the way."""
    nid, node = _node(prompt, link, where)
    while node.get("class_type") in ("ControlNetApply", "ControlNetApplyAdvanced"):
        ct = node["class_type"]
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
        nid, node = _node(prompt, args.get("conditioning") or args.get("positive"), f"node {nid} conditioning")
    if node.get("class_type") != "CLIPTextEncode":
        raise ComfyError(nid, node.get("class_type"), f"{where} must come from CLIPTextEncode (or a ControlNetApply over it)")
    text = node.get("inputs", {}).get("text")
    if not isinstance(text, str):
        raise ComfyError(nid, "CLIPTextEncode", "text must be a literal string")
    return text


def _model(prompt: dict, link: Any, where: str, loras: list) -> tuple[str, dict]:
    """The checkpoint node behind a model link, collecting LoraLoaders on the way."""
    nid, node = _node(prompt, link, where)
    while node.get("class_type") == "LoraLoader":
        args = node.get("inputs", {})
        strength = float(args.get("strength_model", 1.0))
        if float(args.get("strength_clip", strength)) != strength:
            raise ComfyError(nid, "LoraLoader", "strength_clip must equal strength_model (one weight per LoRA)")
        loras.append(f"{PurePath(str(args.get('lora_name', ''))).stem}:{strength}")
        nid, node = _node(prompt, args.get("model"), f"node {nid} model")
    return nid, node


def _links(prompt: dict) -> dict[str, list[str]]:
    """Every node's inputs that are links (two-item lists, as ComfyUI reads them), checked to name
    an existing node and one of its outputs; returns the nodes each node reads from."""
    edges: dict[str, list[str]] = {}
    for nid, node in prompt.items():
        edges[nid] = []
        for name, value in node.get("inputs", {}).items():
            if not (isinstance(value, list) and len(value) == 2):
                continue
            target, index = value
            where = f"node {nid!r} input {name!r} links to"
            if isinstance(target, bool) or not isinstance(target, (str, int)) or str(target) not in prompt:
                raise ComfyError(
                    nid,
                    node["class_type"],
                    f"{where} node {target!r}, which is not in the prompt",
                    code="bad_link",
                    path=f"prompt.{nid}.inputs.{name}",
                )
            target = str(target)
            outputs = OUTPUTS[prompt[target]["class_type"]]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(outputs):
                has = f"outputs 0-{len(outputs) - 1} ({', '.join(outputs)})" if outputs else "no outputs"
                raise ComfyError(
                    nid,
                    node["class_type"],
                    f"{where} output {index!r} of node {target!r} ({prompt[target]['class_type']}), which has {has}",
                    code="bad_link",
                    path=f"prompt.{nid}.inputs.{name}",
                )
            edges[nid].append(target)
    return edges


def _check_acyclic(prompt: dict, edges: dict[str, list[str]]) -> None:
    """Refuse a graph with a cycle, naming the nodes on it (an iterative depth-first search, so a
    long chain costs no recursion)."""
    done: set[str] = set()
    for root in edges:
        if root in done:
            continue
        path, on_path = [root], {root: 0}
        stack = [iter(edges[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done.add(path[-1])
                del on_path[path.pop()]
                stack.pop()
            elif nxt in on_path:
                cycle = path[on_path[nxt] :]
                shown = " -> ".join(repr(n) for n in [*cycle, nxt])
                raise ComfyError(
                    cycle[0],
                    prompt[cycle[0]]["class_type"],
                    f"the graph has a cycle: {shown} (each node reads the next one's output)",
                    code="cyclic_graph",
                    nodes={n: prompt[n]["class_type"] for n in cycle},
                )
            elif nxt not in done:
                on_path[nxt] = len(path)
                path.append(nxt)
                stack.append(iter(edges[nxt]))


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
    _check_acyclic(prompt, _links(prompt))
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
    batch = int(lat["inputs"].get("batch_size", 1))
    return ComfyJob(workflow, inputs, batch, out, model, cns, [c[1] for c in controls], lat_id)


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
