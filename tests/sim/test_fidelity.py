"""The simulator, fed the profile measured on this machine, predicts the live local backend."""

from legodiffusion.sim.fidelity import fidelity


def test_simulated_latencies_are_within_15_percent_of_the_live_backend(tmp_path):
    result = fidelity(tmp_path, requests=40, rate=4.0, seed=0, progress=lambda *_: None)
    for workflow, v in result.items():
        assert v["requests"] >= 10
        assert v["err_p50"] <= 0.15, (workflow, v)
        assert v["err_p95"] <= 0.15, (workflow, v)
