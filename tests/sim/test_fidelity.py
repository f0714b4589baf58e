"""The simulator, fed the profile measured on this machine, predicts the live local backend.

Timing-sensitive (a live run with real arrival times on a shared machine), so it runs under the
``timing`` marker: ``make test-slow``."""

import pytest

from legodiffusion.sim.fidelity import fidelity


@pytest.mark.timing
def test_simulated_latencies_are_within_15_percent_of_the_live_backend(tmp_path):
    result = fidelity(tmp_path, requests=300, rate=3.0, seed=0, progress=lambda *_: None)
    for workflow, v in result.items():
        assert v["requests"] >= 100
        assert v["err_p50"] <= 0.15, (workflow, v)
        assert v["err_p95"] <= 0.15, (workflow, v)
