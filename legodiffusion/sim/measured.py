"""Measured profiles written as a reference file, in the schema the simulator reads.

``benchmarks/gpu_check.py`` measures the simulator's operators on a real device; this turns those
measurements into ``legodiffusion/sim/data/<gpu>.json``: every figure it measured replaces the
sourced one of the base file and says so (device and commit), every figure it did not measure keeps
the base's value and source, so the file stays honest about which numbers are whose.
"""

from __future__ import annotations

import copy

from legodiffusion.profiles.book import ModelProfile
from legodiffusion.sim.reference import BATCHES, PX_1024

#: keys of a model entry that are not operators
NOT_OPS = frozenset({"weights_gb", "weights_bytes", "weights_from", "architecture"})


def _point(prof: ModelProfile, op: str, batch: int, px: int):
    for p in prof.ops:
        if p.op == op and p.mode == "default" and p.batch == batch and p.px in (px, 0):  # 0: size does not matter
            return p
    return None


def measured_reference(
    base: dict,
    measured: dict[str, ModelProfile],
    device: str,
    memory_bytes: int,
    source: str,
    px: int = PX_1024,
    loads: dict[str, float] | None = None,
) -> tuple[dict, list[str]]:
    """``base`` (a reference file's data) with the figures ``measured`` holds replaced.

    ``measured`` maps the base's model names to profiles taken at ``px`` pixels (1024² on a GPU;
    a CPU run uses small images and says so in ``source``). An operator counts as measured when the
    profile has it at every batch of the file's curve; its batch-1 latency, activation memory and
    its own batch curve replace the base's. ``loads`` may give measured ``disk_bytes_per_s`` and
    ``pcie_bytes_per_s``. Returns the new data and the (model, op) pairs it measured."""
    data = copy.deepcopy(base)
    data["gpu"] = device
    data["memory_bytes"] = int(memory_bytes)
    data["sources"]["measured"] = source
    data["notes"] = (
        f"Figures marked 'measured' were measured on {device} ({source}); every other figure is the base file's, with its own source."
    )
    done: list[str] = []
    for model, prof in measured.items():
        entry = data["models"][model]
        for op, spec in entry.items():
            if op in NOT_OPS:
                continue
            points = [_point(prof, op, b, px) for b in BATCHES]
            if any(p is None for p in points) or points[0].latency_s <= 0:
                continue
            curve = f"measured/{model}/{op}"
            data["batch_curves"][curve] = {"factors": [p.latency_s / points[0].latency_s for p in points], "source": "measured"}
            spec.update(
                latency_s=points[0].latency_s,
                activation_gb=points[0].peak_bytes * (PX_1024 / px) / 1e9,
                batch_curve=curve,
                source="measured",
            )
            done.append(f"{model}/{op}")
        weights = entry.get("weights_bytes")
        if weights is not None:
            for comp in list(weights):
                if comp in prof.components:
                    weights[comp] = prof.components[comp].weight_bytes
                    weights["source"] = "measured"
    for key, value in (loads or {}).items():
        data[key] = {"value": value, "source": "measured"}
    return data, done
