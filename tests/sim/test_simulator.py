"""The simulator drives the real coordinator on a virtual clock with reference profiles."""

import csv
import re

from typer.testing import CliRunner

from legodiffusion.cli.main import app
from legodiffusion.core.bundle import allocate
from legodiffusion.sim.experiment import run_trace
from legodiffusion.sim.reference import ReferenceCost, load_reference
from legodiffusion.sim.traces import bursty, from_csv, gamma, poisson
from legodiffusion.sim.workload import Workload, paper_workflows


def workload():
    return Workload(paper_workflows(), ReferenceCost())


def test_reference_profiles_name_a_source_for_every_number():
    data = load_reference("h100")
    for name, model in data["models"].items():
        for key, spec in model.items():
            assert spec.get("source"), f"{name}.{key} has no source"
            named = [k for k in data["sources"] if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", spec["source"])]
            assert named, f"{name}.{key}: source {spec['source']!r} names no entry of 'sources'"


def test_workload_has_twelve_paper_workflows_with_skewed_popularity():
    wl = workload()
    assert len(wl.names) == 12
    steps = {wf.inputs["steps"] for wf in wl.workflows}
    assert min(steps) == 4 and max(steps) == 50
    mix = wl.mix
    flux_dev = sum(v for k, v in mix.items() if k.startswith("flux-dev"))
    assert flux_dev > 0.3, "a few base models carry most requests"
    assert all(s > 0 for s in wl.solo_s.values())


def test_simulation_is_deterministic_for_a_seed():
    wl = workload()
    trace = poisson(1.0, 60, wl.mix, seed=5)
    a = run_trace(trace, wl, "ours", 8, warmup_s=10)
    b = run_trace(trace, wl, "ours", 8, warmup_s=10)
    assert (a.met, a.rejected, a.dispatches, a.percentiles()) == (b.met, b.rejected, b.dispatches, b.percentiles())


def test_traces():
    mix = {"a": 1.0, "b": 3.0}
    p = poisson(10.0, 100.0, mix, seed=1)
    assert 850 < len(p) < 1150 and all(0 <= x.t < 100 for x in p)
    assert sum(1 for x in p if x.workflow == "b") > 2 * sum(1 for x in p if x.workflow == "a")
    b = bursty(2.0, 8.0, 40.0, 20.0, 100.0, mix, seed=1)
    inside = sum(1 for x in b if 40 <= x.t < 60)
    assert inside > 4 * sum(1 for x in b if 0 <= x.t < 20)
    g = gamma(5.0, 3.0, 200.0, mix, seed=1)
    gaps = [y.t - x.t for x, y in zip(g, g[1:])]
    mean = sum(gaps) / len(gaps)
    cv = (sum((x - mean) ** 2 for x in gaps) / len(gaps)) ** 0.5 / mean
    assert 0.15 < mean < 0.25 and cv > 2.0


def test_a_csv_trace_we_did_not_design_replays_and_reports_attainment(tmp_path):
    path = tmp_path / "trace.csv"
    rows = [
        (1000.25, "sd35t", ""),
        (1000.25, "flux-schnell", 7),
        (1001.9, "flux-dev", ""),
        (1003.0, "sd3m-canny", 3),
        (1003.5, "sd35l-lora", ""),
        (1007.75, "flux-dev-canny", ""),
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp_s", "workflow", "seed"])
        w.writerows(rows)
    trace = from_csv(path)
    assert trace[0].t == 0.0 and trace[-1].t == 7.5 and trace[1].inputs == {"seed": 7}
    res = run_trace(trace, workload(), "ours", 4)
    assert res.requests == 6 and 0.0 <= res.attainment <= 1.0
    out = CliRunner().invoke(app, ["sim", "--trace", "csv", "--csv", str(path), "--gpus", "4", "--warmup", "0"])
    assert out.exit_code == 0, out.output
    assert "SLO attainment" in out.output


def test_micro_serving_beats_the_monolithic_baseline_under_load():
    wl = workload()
    trace = poisson(1.2, 240, wl.mix, seed=3)
    ours = run_trace(trace, wl, "ours", 8, warmup_s=30)
    bundle = run_trace(trace, wl, "bundle-static", 8, warmup_s=30)
    assert ours.attainment > bundle.attainment
    assert bundle.config.startswith("bundle-static: one request at a time per GPU")


def test_bundle_allocation_follows_demand_and_packs_small_pipelines():
    bins = allocate({"a": 6.0, "b": 2.0, "c": 0.5}, 8)
    assert len(bins) == 8 and all(bins), "every GPU serves something"
    count = {k: sum(1 for b in bins if k in b) for k in "abc"}
    assert count["a"] > count["b"] >= count["c"] >= 1
    # shares 2.4 / 1.6 / 1.0 of 5 GPUs: whole GPUs by share, remainders wrapped onto shared GPUs
    # whose pipelines fit together in memory
    packed = allocate({"a": 2.4, "b": 1.6, "c": 1.0}, 5, memory={"a": 50, "b": 30, "c": 30}, capacity=80)
    assert all(sum({"a": 50, "b": 30, "c": 30}[k] for k in b) <= 80 for b in packed)
    assert any(len(b) > 1 for b in packed), "small remainders share a GPU"
    assert {k for b in packed for k in b} == {"a", "b", "c"}, "no workflow is starved"


def test_a_prefetch_loads_on_the_simulated_worker_and_takes_its_load_time():
    from legodiffusion.core.coordinator import Coordinator, Request
    from legodiffusion.core.policy import MicroServingPolicy
    from legodiffusion.sim.cluster import Simulator

    wl = workload()
    cost = wl.cost
    coord = Coordinator(3, MicroServingPolicy(), cost=cost)
    sim = Simulator(coord, cost, budget_bytes=cost.memory_bytes)
    keys = [("flux-dev", c, None) for c in ("config", "text_encoder", "denoiser", "vae")]
    assert sim.preload(0, keys)
    for rid in range(1, 9):  # far more flux-dev work than one replica takes
        req = wl.request(rid, "flux-dev", 0.0)
        sim.submit_at(0.0, Request(rid, req.template, req.inputs, req.workflow, 0.0, None))
    sim.run()
    assert coord.stats.prefetches > 0
    denoiser = ("flux-dev", "denoiser", None)
    copies = [w.id for w in sim.workers if denoiser in w.memory]
    assert len(copies) > 1, "idle workers took replicas of the busy model"
    assert all(o.status == "succeeded" for o in sim.outcomes.values()) and len(sim.outcomes) == 8
    assert all(w.busy_s >= cost.load_s("flux-dev", "denoiser") for w in sim.workers if w.id in copies and w.id != 0)
