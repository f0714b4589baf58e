"""Seeded workload and trace generators: many workflows over few base models, drifting popularity
with single-workflow bursts, and CSV replay scaled to a rate."""

import csv
import dataclasses
from collections import Counter

import pytest

from legodiffusion.sim.reference import PX_1024, ReferenceCost, load_reference
from legodiffusion.sim.traces import drifting, drifting_schedule, from_csv, make_trace
from legodiffusion.sim.workload import Workload, make_workload, many_workflows, paper_workflows

BASES = {"flux-dev", "flux-schnell", "sd3.5-large", "sd3-medium", "flux2-klein-4b", "z-image-turbo", "qwen-image"}


@pytest.fixture(scope="module")
def cost():
    return ReferenceCost()


def _signature(wfs):
    return [(w.name, dict(w.spec.models), {k: v for k, v in w.inputs.items() if "control_image" not in k}, w.popularity) for w in wfs]


def _shares(arrivals, names):
    counts = Counter(a.workflow for a in arrivals)
    total = max(1, sum(counts.values()))
    return {n: counts[n] / total for n in names}


def _tv(p, q):
    return 0.5 * sum(abs(p[k] - q[k]) for k in p)


def test_many_workflows_is_deterministic_for_a_seed_and_differs_across_seeds():
    assert _signature(many_workflows(3)) == _signature(many_workflows(3))
    assert _signature(many_workflows(3)) != _signature(many_workflows(4))
    assert [w.name for w in many_workflows(3)] != [w.name for w in many_workflows(4)]


def test_many_workflows_cover_seven_bases_with_loras_controlnets_and_sizes():
    wfs = many_workflows(0)
    ref = load_reference("h100")["models"]
    assert len(wfs) == 40 and len({w.name for w in wfs}) == 40
    assert {w.spec.models["base"] for w in wfs} == BASES
    cn_counts = Counter(len(w.spec.models) - 1 for w in wfs)
    assert cn_counts[0] > 0 and cn_counts[1] + cn_counts[2] > 0 and max(cn_counts) <= 2
    loras = [w.inputs["loras"] for w in wfs if w.inputs.get("loras")]
    assert 0 < len(loras) < len(wfs)
    assert all(lora.startswith("lora-") and "," not in lora for lora in loras), "0 or 1 LoRA per workflow"
    assert len({w.inputs["height"] for w in wfs}) >= 2
    assert all(w.inputs["height"] == w.inputs["width"] in (512, 768, 1024) for w in wfs)
    for w in wfs:
        base, steps = w.spec.models["base"], w.inputs["steps"]
        cns = [m for k, m in w.spec.models.items() if k != "base"]
        assert all(cn in ref for cn in cns), f"{w.name}: ControlNet without a reference profile"
        assert len(set(cns)) == len(cns)
        family = {"flux-dev": "flux", "flux-schnell": "flux", "sd3.5-large": "sd35", "sd3-medium": "sd3m"}.get(base)
        assert all(cn.startswith(f"cn-{family}-") for cn in cns), f"{w.name}: {cns} do not fit {base}"
        bounds = {"flux-dev": (20, 50), "flux-schnell": (4, 4), "flux2-klein-4b": (4, 4), "z-image-turbo": (8, 9), "qwen-image": (30, 50)}
        lo, hi = bounds.get(base, (20, 40))
        assert lo <= steps <= hi, f"{w.name}: {steps} steps"


def test_many_workflows_popularity_is_skewed():
    mix = Workload(many_workflows(1), ReferenceCost()).mix
    shares = sorted(mix.values(), reverse=True)
    assert sum(shares[:4]) > 0.4, "a few workflows carry most requests"
    assert shares[0] / shares[-1] > 20
    assert sum(shares[20:]) < 0.3, "a long tail"


def test_many_workload_pipelines_do_not_fit_as_replicas_but_shared_bases_do(cost):
    wl = Workload(many_workflows(0), cost)
    assert all(s > 0 for s in wl.solo_s.values())
    mem = wl.pipeline_bytes()
    by_base = {}
    for w in wl.workflows:
        by_base.setdefault(w.spec.models["base"], {}).setdefault(len(w.spec.models) > 1, []).append(mem[w.name])
    compared = 0
    for base, groups in by_base.items():
        if True in groups and False in groups:
            assert min(groups[True]) > max(groups[False]), f"{base}: a ControlNet adds its weights"
            compared += 1
    assert compared >= 2
    shared = sum(c.weight_bytes for m in wl.models() for c in cost.profiles[m].components.values())
    assert sum(mem.values()) > 8 * cost.memory_bytes, "one pipeline per workflow overflows 8 GPUs"
    assert shared < 3 * cost.memory_bytes, "the shared base models and ControlNets fit on 3"


def test_each_workflow_runs_at_its_own_resolution(cost):
    class PixelCost(ReferenceCost):
        """Latency proportional to pixels, whatever the reference file does at other sizes."""

        def exec_s(self, op, mode, model, batch, px):
            return super().exec_s(op, mode, model, batch, PX_1024) * (px or PX_1024) / PX_1024

    base = next(w for w in many_workflows(0) if w.inputs["height"] == 1024)
    small = dataclasses.replace(base, name="small", inputs={**base.inputs, "height": 512, "width": 512})
    wl = Workload([base, small], PixelCost())
    assert wl.solo_s["small"] == pytest.approx(wl.solo_s[base.name] / 4)
    assert wl.request(1, "small", 0.0).inputs["height"] == 512
    mem = wl.pipeline_bytes()
    assert mem["small"] == mem[base.name]
    paper = Workload(paper_workflows(), PixelCost())
    assert paper.request(1, "flux-dev", 0.0).inputs["height"] == 1024 and paper.size == 1024


def test_drifting_is_deterministic_sorted_and_seeded():
    names = [w.name for w in paper_workflows()]
    a = drifting(3.0, 300.0, names, seed=7)
    assert a == drifting(3.0, 300.0, names, seed=7)
    assert a != drifting(3.0, 300.0, names, seed=8)
    assert [x.t for x in a] == sorted(x.t for x in a) and all(0 <= x.t < 300 for x in a)
    assert {x.workflow for x in a} <= set(names)
    assert drifting_schedule(3.0, 300.0, names, seed=7).describe() == drifting_schedule(3.0, 300.0, names, seed=7).describe()


def test_drifting_popularity_changes_over_time():
    names = [w.name for w in paper_workflows()]
    rate, period = 10.0, 60.0
    trace = drifting(rate, 600.0, names, seed=2, period_s=period, bursts=0)
    assert 0.9 * rate * 600 < len(trace) < 1.1 * rate * 600, "no bursts: the total rate stays at rate"
    windows = [_shares([a for a in trace if k * period <= a.t < (k + 1) * period], names) for k in range(10)]
    assert _tv(windows[0], windows[-1]) > 0.3
    assert len({max(w, key=w.get) for w in windows}) >= 4, "the most popular workflow changes"
    sched = drifting_schedule(rate, 600.0, names, seed=2, period_s=period, bursts=0)
    # the observed shares follow the schedule's, not a fixed mix
    for k in (0, 5, 9):
        expected = sched.shares((k + 0.5) * period)
        assert _tv(windows[k], expected) < 0.15 < _tv(windows[k], sched.shares(((k + 5) % 10 + 0.5) * period))


def test_a_drifting_burst_is_dominated_by_one_workflow():
    names = [w.name for w in paper_workflows()]
    rate = 4.0
    sched = drifting_schedule(rate, 600.0, names, seed=3, burst_multiplier=6.0, burst_s=20.0, bursts=3)
    trace = drifting(rate, 600.0, names, seed=3, burst_multiplier=6.0, burst_s=20.0, bursts=3)
    assert len(sched.bursts) == 3
    for b in sched.bursts:
        inside = [a for a in trace if b.start_s <= a.t < b.end_s]
        top, n = Counter(a.workflow for a in inside).most_common(1)[0]
        assert top == b.workflow and n > 0.7 * len(inside)
        assert len(inside) > 3 * rate * (b.end_s - b.start_s)
    assert len({b.workflow for b in sched.bursts}) >= 2
    assert all(a.end_s <= b.start_s for a, b in zip(sched.bursts, sched.bursts[1:]))


def _write_csv(path, rows, header=("timestamp_s", "workflow", "seed")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_make_trace_csv_rescales_to_the_asked_rate_and_truncates(tmp_path):
    wl = make_workload("csv", ReferenceCost())
    path = tmp_path / "trace.csv"
    names = ["flux-dev", "sd35t", "flux-schnell"]
    # 201 requests over 100 s (2/s) with uneven gaps, starting at an epoch offset
    times = [5000.0 + 100.0 * (i / 200) ** 2 for i in range(201)]
    _write_csv(path, [(t, names[i % 3], i) for i, t in enumerate(times)])
    full = make_trace("csv", wl, 10.0, 1e9, csv_path=path)
    assert len(full) == 201 and full[0].t == 0.0
    assert (full[-1].t - full[0].t) / (len(full) - 1) == pytest.approx(1 / 10.0)
    assert [a.workflow for a in full] == [names[i % 3] for i in range(201)] and full[7].inputs == {"seed": 7}
    cut = make_trace("csv", wl, 10.0, 5.0, csv_path=path)
    assert 0 < len(cut) < len(full) and all(a.t < 5.0 for a in cut) and cut == full[: len(cut)]
    _write_csv(path, [(0, "flux-dev", 1), (1, "no-such-workflow", 2)])
    with pytest.raises(ValueError, match="no-such-workflow"):
        make_trace("csv", wl, 1.0, 10.0, csv_path=path)


def test_from_csv_reads_extra_input_columns_and_whitespace(tmp_path, cost):
    path = tmp_path / "t.csv"
    path.write_text(" timestamp_s , workflow ,seed, height , width\n 10.5, flux-dev ,7, 512, 512 \n12,sd35t,,,\n\n11, flux-schnell , 3\n")
    trace = from_csv(path)
    assert [(a.t, a.workflow) for a in trace] == [(0.0, "flux-dev"), (0.5, "flux-schnell"), (1.5, "sd35t")]
    assert trace[0].inputs == {"seed": 7, "height": 512, "width": 512} and trace[1].inputs == {"seed": 3} and trace[2].inputs == {}
    wl = Workload(paper_workflows(), cost)
    assert wl.request(1, trace[0].workflow, trace[0].t, trace[0].inputs).inputs["height"] == 512
    with pytest.raises(KeyError, match="unknown workflow"):
        wl.request(2, "no-such-workflow", 0.0)


def test_make_workload_and_make_trace_name_the_benchmarks(cost):
    paper = make_workload("paper", cost)
    many = make_workload("many", cost, seed=5)
    assert paper.names == [w.name for w in paper_workflows()]
    assert many.names == [w.name for w in many_workflows(5)]
    assert make_workload("drifting", cost).names == paper.names
    p = make_trace("paper", paper, 5.0, 100.0, seed=1)
    assert 400 < len(p) < 600 and {a.workflow for a in p} <= set(paper.names)
    m = make_trace("many", many, 5.0, 100.0, seed=1)
    assert {a.workflow for a in m} <= set(many.names) and len({a.workflow for a in m}) > 12
    d = make_trace("drifting", paper, 5.0, 100.0, seed=1, period_s=20.0)
    assert d == drifting(5.0, 100.0, paper.names, 1, period_s=20.0)
    with pytest.raises(ValueError, match="unknown"):
        make_workload("nope", cost)
    with pytest.raises(ValueError, match="unknown"):
        make_trace("nope", paper, 1.0, 1.0)


def test_editing_workload_runs_the_kept_steps_and_its_vae_encoder(cost):
    """A quarter of the editing mix is edits (img2img at strength 0.6, inpainting): img2img requests expand to the
    steps an edit keeps (0.6 x 28 rounded as the flow pipelines round) plus a VAE encode, and cost
    the simulator less than the same model's text-to-image."""
    from legodiffusion.sim.experiment import run_trace
    from legodiffusion.sim.traces import poisson

    wl = make_workload("editing", cost)
    assert sum(share for name, share in wl.mix.items() if name.endswith(("img2img", "inpaint", "hires"))) == pytest.approx(0.25)
    nodes = wl.template("flux-dev-img2img").nodes
    assert sum(n.op == "denoise" for n in nodes) == 28 - int(28 - 28 * 0.6) == 17
    assert sum(n.op == "vae_encode" for n in nodes) == 1
    assert wl.solo_s["flux-dev-img2img"] < wl.solo_s["flux-dev"]
    inpaint = wl.template("sd35l-inpaint").nodes  # strength 1: every step, each blended with the image
    assert sum(n.op == "inpaint_blend" for n in inpaint) == 28 and sum(n.op == "vae_encode" for n in inpaint) >= 1
    hires = wl.template("flux-dev-hires").nodes  # 28 steps at 512², then the 14 that strength 0.5 keeps at 1024²
    assert sum(n.op == "denoise" for n in hires) == 28 + 14 and sum(n.op == "upscale_latents" for n in hires) == 1
    assert wl.pixels("flux-dev-hires") == 1024 * 1024
    result = run_trace(poisson(0.5, 40, wl.mix, 3), wl, "ours", 8)
    assert result.requests > 0 and result.met == result.requests


def test_step_cached_requests_skip_denoiser_calls_and_cost_less(cost):
    """With the First Block Cache model the paper requests on models with a skip share opt in; about
    half a FLUX.1-dev request's denoiser calls (its share) run only their first block, none of a
    few-step schnell request's, so the same trace keeps the cluster busy for less time, and a call's
    skips are drawn per sample, the same whatever the order of events."""
    from legodiffusion.sim.experiment import run_trace
    from legodiffusion.sim.step_skip import fbcache
    from legodiffusion.sim.traces import poisson

    model = fbcache()
    assert model.skips(7, 3, "flux-dev") == model.skips(7, 3, "flux-dev")
    assert 0.45 < sum(model.skips(r, n, "flux-dev") for r in range(50) for n in range(40)) / 2000 < 0.58
    assert not any(model.skips(r, n, "flux-schnell") for r in range(50) for n in range(40))
    full = lambda n: 0.1 * n  # noqa: E731
    head = model.share("flux-dev").head
    assert model.batch_s(full, 4, 4, "flux-dev") == pytest.approx(0.4) and model.batch_s(full, 4, 0, "flux-dev") == pytest.approx(
        0.4 * head
    )
    assert model.batch_s(full, 4, 1, "flux-dev") == pytest.approx(0.4 * head + 0.1 * (1 - head))
    assert model.share("sd3-medium").head > head, "a 24-block MMDiT's first block is a larger share of its call"

    plain, cached = make_workload("paper", cost), make_workload("paper", cost, step_cache=model)
    assert cached.bind("flux-dev", {})["step_cache"] and plain.bind("flux-dev", {})["step_cache"] is None
    assert cached.bind("flux-schnell", {})["step_cache"] is None, "a model with nothing to skip does not opt in"
    arrivals = poisson(0.5, 60, plain.mix, 5)
    mean_latency = {}
    for name, wl in (("plain", plain), ("cached", cached)):
        result = run_trace(arrivals, wl, "ours", 8)
        assert result.met == result.requests > 0
        latencies = [x for lat in result.latency_by_workflow.values() for x in lat]
        mean_latency[name] = sum(latencies) / len(latencies)
    assert mean_latency["cached"] < 0.8 * mean_latency["plain"]
