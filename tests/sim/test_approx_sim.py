"""The approximate cache in simulation: lookups answer from a cache model, the serving code passes
the skipped iterations through, and the same load then meets more deadlines."""

import pytest

from legodiffusion.core.coordinator import Coordinator
from legodiffusion.core.policy import MicroServingPolicy
from legodiffusion.sim.approx import CacheModel, from_benchmark, make_cache_model, nirvana
from legodiffusion.sim.cluster import Simulator
from legodiffusion.sim.experiment import run_trace
from legodiffusion.sim.reference import ReferenceCost
from legodiffusion.sim.traces import poisson
from legodiffusion.sim.workload import Workload, paper_workflows


def test_the_nirvana_model_saves_its_published_average_and_draws_the_same_per_request():
    model = nirvana()
    assert model.mean_share == pytest.approx(0.21)  # NIRVANA: 21% of GPU compute saved on average
    draws = [model.skipped(rid, 50) for rid in range(4000)]
    assert draws == [model.skipped(rid, 50) for rid in range(4000)]
    assert set(draws) == {0, 5, 10, 15, 20, 25}
    assert sum(draws) / len(draws) / 50 == pytest.approx(0.21, abs=0.01)
    assert {model.skipped(rid, 28) for rid in range(200)} <= {0, 3, 6, 8, 11, 14}  # K of 50 scaled to 28 steps
    assert make_cache_model("off") is None and make_cache_model("nirvana") == model


def test_the_benchmark_model_reads_less_work_json(tmp_path):
    path = tmp_path / "less_work.json"
    path.write_text(
        '{"summary": {"models": "tiny"}, "detail": {"cached": {"hit_rate": 0.5, "per_k": '
        '{"4 of 20 (k=10 of 50)": {"hits": 3}, "10 of 20 (k=25 of 50)": {"hits": 1}}}}}'
    )
    model = from_benchmark(path)
    assert model.hit_rate == 0.5 and model.k_shares == ((10, 3), (25, 1))
    assert model.mean_share == pytest.approx(0.5 * (10 * 3 + 25) / 4 / 50)


def test_simulated_hits_pass_iterations_through_and_take_their_work_off():
    cost = ReferenceCost()
    model = CacheModel(1.0, ((25, 1.0),), "every lookup skips half")
    wl = Workload(paper_workflows(), cost, approx=model)
    req = wl.request(1, "flux-dev", 0.0)
    assert req.inputs["approx_cache"] is True
    assert wl.solo_of(req) < 0.6 * wl.solo_s["flux-dev"]  # 14 of 28 transformer calls skipped
    coord = Coordinator(2, MicroServingPolicy("default"), cost=cost)
    sim = Simulator(coord, cost, approx=model)
    sim.submit_at(0.0, req)
    sim.run()
    assert sim.outcomes[1].status == "succeeded"
    assert coord.stats.nodes_by_op["denoise"] == 14 and coord.stats.passed == 14 * 3  # transformer, step, insert
    assert coord.approx.hit_rate("flux-dev") == 1.0


def test_caching_lets_the_same_load_meet_more_deadlines():
    cost = ReferenceCost()
    plain, cached = Workload(paper_workflows(), cost), Workload(paper_workflows(), cost, approx=nirvana())
    trace = poisson(2.2, 90, plain.mix, seed=3)
    without = run_trace(trace, plain, "ours", 8, warmup_s=15)
    with_cache = run_trace(trace, cached, "ours", 8, warmup_s=15)
    assert with_cache.attainment > without.attainment + 0.05
