"""benchmarks/gpu_check.py runs end to end without CUDA: the same code paths on the tiny models,
so the GPU check cannot rot between the runs that have a GPU."""

import json

import pytest

from benchmarks.gpu_check import main
from legodiffusion.sim.reference import reference_profiles


@pytest.mark.slow  # about a minute on 2 cores: make test-slow
def test_the_gpu_check_runs_on_cpu_and_writes_a_simulator_profile(tmp_path):
    summary = main(["--out", str(tmp_path), "--families", "sd15,flux", "--cpu", "--sim-models", "flux-schnell,cn-flux-canny,cn-sd3m-canny"])
    assert not summary["gpu"] and "NOT GPU figures" in summary["device"]
    for row in summary["equivalence"].values():  # bf16 on CPU: the same kernels, the same image
        assert row["equal"] and row["max_abs_diff"] == 0.0 and row["ratio"] > 0
    assert {"flux-schnell/denoise", "flux-schnell/encode_prompt", "cn-flux-canny/controlnet"} <= set(summary["profiles"]["measured"])
    assert "issue 18" in summary["profiles"]["skipped"]["cn-sd3m-canny"]
    assert summary["loads"]["bytes"] > 0 and summary["loads"]["host_to_device_s"] > 0
    data = json.loads(open(summary["profiles"]["file"]).read())
    assert data["models"]["flux-schnell"]["denoise"]["source"] == "measured" and "NOT GPU figures" in data["sources"]["measured"]
    profiles = reference_profiles(data=data)  # the simulator reads it
    assert profiles["flux-schnell"].latency("denoise", "default", 2, 1024 * 1024) > 0
    assert (tmp_path / "images" / "flux-decomposed.png").exists() and (tmp_path / "gpu_check.json").exists()
