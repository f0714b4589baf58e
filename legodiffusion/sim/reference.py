"""Reference profiles of data-centre GPUs, from data files whose every number names its source.

The file gives batch-1 latencies at 1024² and the architecture facts behind everything else: the
simulator's batch latencies come from the file's batch curves, other resolutions from its token
rule, activation memory from its per-operator figures, tensor sizes from each model's latent,
text and ControlNet shapes, and loads, links and host memory from its hardware section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from legodiffusion.profiles.book import ComponentProfile, ModelProfile, OpPoint, ProfileCost

BATCHES = (1, 2, 4, 8)
SIDES = (256, 512, 768, 1024)
PX_1024 = 1024 * 1024
GLUE_OPS = (
    ("sampler_step", "guided"),
    ("sampler_step", "unguided"),
    ("sampler_step", "true_cfg"),
    ("sampler_step", "zimage_guided"),
    ("init_latents", "default"),
    ("format_text", "default"),
    ("prepare_control_image", "default"),
    ("prepare_image", "default"),
    ("init_latents", "img2img"),
    ("init_latents", "inpaint"),
    ("prepare_mask", "default"),
    ("inpaint_blend", "default"),
    ("sampler_rng", "default"),
    ("apply_overlay", "default"),
    ("init_step_cache", "default"),
    ("approx_lookup", "default"),
    ("approx_insert", "default"),
    ("sd3_patch_embedding", "default"),  # a crop of the base's positional embedding, once per SD3 ControlNet request
)
#: one host->device copy per load, plus a fixed setup cost; host copies are kept in host memory
LOAD_SETUP_S = 0.1
#: operators whose time follows the denoiser's tokens, the image's pixels, or neither
TOKEN_OPS = frozenset({"denoise", "controlnet"})
PIXEL_OPS = frozenset({"vae_decode", "vae_encode", "encode_control_image", "encode_sd3_control"})
#: bytes of values that are not tensors (sampler state, generator state, text)
SMALL_BYTES = 1024


def _value(entry):
    return entry["value"] if isinstance(entry, dict) else entry


def load_reference(gpu: str = "h100") -> dict:
    return json.loads(resources.files("legodiffusion.sim").joinpath(f"data/{gpu}.json").read_text())


def _px_scale(op: str, arch: dict | None, px: int) -> float:
    """Latency at ``px`` pixels relative to 1024² (the file's resolution-scaling rule)."""
    if op in PIXEL_OPS:
        return px / PX_1024
    if op in TOKEN_OPS and arch is not None:
        per_token = arch.get("vae_factor", 8) * arch.get("patch", 2)
        text = arch.get("text_tokens", 0)
        return (px / per_token**2 + text) / (PX_1024 / per_token**2 + text)
    return 1.0


def reference_profiles(gpu: str = "h100", data: dict | None = None) -> dict[str, ModelProfile]:
    """One :class:`ModelProfile` per model at batches 1-8 and sides 256-1024."""
    data = data or load_reference(gpu)
    glue = _value(data["glue_s"])
    curves = {name: c["factors"] for name, c in data["batch_curves"].items()}
    disk, pcie = _value(data["disk_bytes_per_s"]), _value(data["pcie_bytes_per_s"])
    profiles = {}
    for name, m in data["models"].items():
        prof = ModelProfile(model_key=name, device=data["gpu"], versions={}, source=f"reference file {gpu}.json")
        arch = m.get("architecture")
        base_arch = arch if arch and "text_tokens" in arch else None
        for op, spec in m.items():
            if op in ("weights_bytes", "weights_from", "architecture"):
                continue
            factors = curves[spec["batch_curve"]]
            act = spec.get("activation_gb", 0.0) * 1e9
            modes = ("default", "controlnet") if op == "denoise" else ("default",)
            for md in modes:
                for b, f in zip(BATCHES, factors):
                    for side in SIDES:
                        px = side * side
                        scale = _px_scale(op, base_arch, px)
                        prof.ops.append(OpPoint(op, md, b, px, spec["latency_s"] * f * scale, int(act * b * px / PX_1024)))
        for op, mode in GLUE_OPS:
            for b in BATCHES:
                prof.ops.append(OpPoint(op, mode, b, PX_1024, glue * b, 0))
        for comp, nbytes in m["weights_bytes"].items():
            if comp == "source":
                continue
            prof.components[comp] = ComponentProfile(nbytes / disk, LOAD_SETUP_S + nbytes / pcie, nbytes)
        profiles[name] = prof
    return profiles


@dataclass(frozen=True)
class Link:
    fixed_s: float
    bytes_per_s: float

    def seconds(self, nbytes: int) -> float:
        return 0.0 if nbytes <= 0 else self.fixed_s + nbytes / self.bytes_per_s


class ReferenceCost(ProfileCost):
    """The cost model of a reference GPU and its cluster: profiles, LoRA load time, device and
    host memory, links within and across nodes, and the runtime's per-dispatch overhead."""

    def __init__(self, gpu: str = "h100") -> None:
        data = load_reference(gpu)
        super().__init__(reference_profiles(gpu, data))
        self.gpu = gpu
        self.memory_bytes = int(data["memory_bytes"])
        self.host_memory_bytes = int(_value(data["host_memory_bytes"]))
        self.gpus_per_node = int(_value(data["gpus_per_node"]))
        self.lora_load_s = float(_value(data["lora_load_s"]))
        self.dispatch_overhead_s = float(_value(data["dispatch_overhead_s"]))
        links = data["links"]
        self.same_node = Link(links["same_node"]["fixed_s"], links["same_node"]["bytes_per_s"])
        self.cross_node = Link(links["cross_node"]["fixed_s"], links["cross_node"]["bytes_per_s"])
        self._arch = {name: m.get("architecture", {}) for name, m in data["models"].items()}

    def transfer_s(self, nbytes: int) -> float:
        """A pull from another GPU of the same node (placement's estimate; the simulator charges
        the actual link)."""
        return self.same_node.seconds(nbytes)

    def tensor_bytes(self, port: str, model: str | None, px: int | None) -> int | None:
        """Bytes of an output on ``port`` of a node of ``model`` at ``px`` pixels, from the
        model's architecture (None when the file does not describe it)."""
        arch = self._arch.get(model) if model is not None else None
        if not arch:
            return None
        px = px or PX_1024
        nbytes = arch.get("dtype_bytes", 2)
        if port == "residual":
            tokens = px // (8 * 2) ** 2
            return arch["residual_blocks"] * tokens * arch["hidden"] * nbytes
        if "latent_channels" not in arch:
            return None
        latent_px = px // arch["vae_factor"] ** 2
        if port in ("latents", "noise", "control"):
            return arch["latent_channels"] * latent_px * nbytes
        if port == "embedding":
            return (arch["text_tokens"] * arch["text_dim"] + arch["pooled_dim"]) * nbytes
        if port == "image":
            return 3 * px * nbytes
        return SMALL_BYTES
