"""Measured profiles become a reference file the simulator reads: measured figures replace the
sourced ones and say so; the rest keep the base file's values and sources."""

import re

from legodiffusion.profiles.book import ComponentProfile, ModelProfile, OpPoint
from legodiffusion.sim.measured import measured_reference
from legodiffusion.sim.reference import BATCHES, PX_1024, load_reference, reference_profiles


def test_measured_figures_replace_sourced_ones_and_the_simulator_reads_them():
    base = load_reference("h100")
    times = {1: 0.2, 2: 0.38, 4: 0.75, 8: 1.5}
    prof = ModelProfile(
        "k",
        "cuda:NVIDIA_H200",
        {},
        [OpPoint("denoise", "default", b, PX_1024, times[b], 3 * 10**9) for b in BATCHES]
        + [OpPoint("vae_decode", "default", 1, PX_1024, 0.07, 10**9)],  # not at every batch: not measured
        {"denoiser": ComponentProfile(4.0, 1.0, 23_802_816_640)},
    )
    data, done = measured_reference(base, {"flux-dev": prof}, "NVIDIA H200", 141 * 10**9, "benchmarks/gpu_check.py at abc123")
    assert done == ["flux-dev/denoise"]
    entry = data["models"]["flux-dev"]
    assert entry["denoise"]["source"] == "measured" and entry["denoise"]["latency_s"] == 0.2
    assert entry["vae_decode"] == base["models"]["flux-dev"]["vae_decode"]  # kept, with its source
    assert data["memory_bytes"] == 141 * 10**9 and data["gpu"] == "NVIDIA H200"
    assert base["models"]["flux-dev"]["denoise"]["source"] != "measured"  # the base is not modified
    for name, model in data["models"].items():  # still every number names a source entry
        for key, spec in model.items():
            assert any(re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", spec["source"]) for k in data["sources"]), (name, key)
    profiles = reference_profiles(data=data)
    for b in BATCHES:
        assert abs(profiles["flux-dev"].latency("denoise", "default", b, PX_1024) - times[b]) < 1e-12
    assert profiles["flux-dev"].peak_bytes("denoise", "default", 1, PX_1024) == 3 * 10**9
