"""Reference profiles of data-centre GPUs, from data files whose every number names its source."""

from __future__ import annotations

import json
from importlib import resources

from legodiffusion.profiles.book import ComponentProfile, ModelProfile, OpPoint, ProfileCost

BATCHES = (1, 2, 4, 8)
PX_1024 = 1024 * 1024
GLUE_OPS = (
    ("sampler_step", "guided"),
    ("sampler_step", "unguided"),
    ("init_latents", "default"),
    ("format_text", "default"),
    ("prepare_control_image", "default"),
)
#: one host->device copy per load, plus a fixed setup cost; host copies are kept in host memory
LOAD_SETUP_S = 0.1


def load_reference(gpu: str = "h100") -> dict:
    return json.loads(resources.files("legodiffusion.sim").joinpath(f"data/{gpu}.json").read_text())


def reference_profiles(gpu: str = "h100") -> dict[str, ModelProfile]:
    """One :class:`ModelProfile` per model, expanded to batches 1-8 (linear in batch: see the
    file's ``batching`` source)."""
    data = load_reference(gpu)
    glue = data["glue_s"]["value"]
    profiles = {}
    for name, m in data["models"].items():
        prof = ModelProfile(model_key=name, device=data["gpu"], versions={}, source=f"reference file {gpu}.json")
        for op, spec in m.items():
            if op == "weights_gb":
                continue
            mode = "default"
            modes = ("default", "controlnet") if op == "denoise" else (mode,)
            for md in modes:
                for b in BATCHES:
                    prof.ops.append(OpPoint(op, md, b, PX_1024, spec["latency_s"] * b, 0))
        for op, mode in GLUE_OPS:
            for b in BATCHES:
                prof.ops.append(OpPoint(op, mode, b, PX_1024, glue * b, 0))
        for comp, gb in m["weights_gb"].items():
            if comp == "source":
                continue
            nbytes = int(gb * 1e9)
            prof.components[comp] = ComponentProfile(0.0, LOAD_SETUP_S + nbytes / data["pcie_bytes_per_s"], nbytes)
        profiles[name] = prof
    return profiles


class ReferenceCost(ProfileCost):
    """The cost model of a reference GPU; LoRAs cost their load time, nothing per call."""

    def __init__(self, gpu: str = "h100") -> None:
        super().__init__(reference_profiles(gpu))
        data = load_reference(gpu)
        self.memory_bytes = int(data["memory_bytes"])
        self.lora_load_s = float(data["lora_load_s"]["value"])
