"""The simulator, calibrated on one live run of the local backend, predicts another.

The end-to-end check is timing-sensitive (two live runs with real arrival times on a shared
machine), so it runs under the ``timing`` marker: ``make test-slow``. The pieces it is built from
are checked here deterministically."""

import json

import pytest
from typer.testing import CliRunner

from legodiffusion.profiles.book import ProfileCost
from legodiffusion.sim import fidelity as fid
from legodiffusion.sim.traces import Arrival


def _alone_and_together(keys, alone_s, together_s):
    """Records where every key ran once alone (worker 0, nothing else running) and twice alongside
    itself (workers 0 and 1 at the same time)."""
    out, t = [], 0.0
    for op, mode, batch, px in keys:
        out.append(fid.Timed(op, mode, batch, px, 0, t, t + alone_s))
        t += alone_s + 1.0
        out.append(fid.Timed(op, mode, batch, px, 0, t, t + together_s))
        out.append(fid.Timed(op, mode, batch, px, 1, t, t + together_s))
        t += together_s + 1.0
    return out


KEYS = [
    ("format_text", "default", 1, 4096),
    ("encode_prompt", "default", 1, 4096),
    ("init_latents", "default", 1, 4096),
    ("denoise", "default", 1, 4096),
    ("sampler_step", "guided", 1, 4096),
    ("sampler_step", "unguided", 1, 4096),
    ("vae_decode", "default", 1, 4096),
]


def test_profile_is_the_mean_per_operator_mode_batch_and_pixels():
    records = [
        fid.Timed("denoise", "default", 1, 4096, 0, 0.0, 0.010),
        fid.Timed("denoise", "default", 1, 4096, 1, 0.0, 0.020),
        fid.Timed("denoise", "default", 2, 4096, 0, 1.0, 1.030),
        fid.Timed("denoise", "default", 1, 9216, 0, 2.0, 2.040),
    ]
    prof = fid.profile_from_dispatches(records)
    points = {(p.op, p.mode, p.batch, p.px): p.latency_s for p in prof.ops}
    assert points == pytest.approx(
        {("denoise", "default", 1, 4096): 0.015, ("denoise", "default", 2, 4096): 0.030, ("denoise", "default", 1, 9216): 0.040}
    )
    assert prof.latency("denoise", "default", 1, 9216) == pytest.approx(0.040)


def test_a_dispatch_is_contended_when_another_worker_computes_through_enough_of_it():
    records = [
        fid.Timed("denoise", "default", 1, 0, 0, 0.0, 1.0),
        fid.Timed("denoise", "default", 1, 0, 1, 0.8, 1.4),  # 20% of the first, 33% of itself
        fid.Timed("denoise", "default", 1, 0, 0, 2.0, 3.0),  # alone
        fid.Timed("denoise", "default", 1, 0, 1, 2.5, 2.6),  # inside the third: fully overlapped
    ]
    assert fid.contended(records, share=0.3) == [False, True, False, True]
    assert fid.contended(records, share=0.15) == [True, True, False, True]


def test_simulated_workers_draw_contended_times_only_for_dispatches_running_together():
    alone_s, together_s = 0.001, 0.005
    records = _alone_and_together(KEYS, alone_s, together_s)
    prof = fid.profile_from_dispatches(records)
    plan = ProfileCost({fid.MODEL: prof})
    # a lone unguided request is a chain of 11 calls (init_latents runs beside format_text and
    # encode_prompt, too short to count as contention), each alone; plus tiny tensor transfers
    styled = fid.simulate([Arrival(0.0, "styled")], plan, fid.SampledCost(prof, records))["styled"][0]
    assert 11 * alone_s <= styled < 11 * alone_s + 0.001
    # a guided step runs its two denoiser calls on the two workers at once: both contended
    guided = fid.simulate([Arrival(0.0, "guided")], plan, fid.SampledCost(prof, records))["guided"][0]
    assert guided >= 5 * together_s + 6 * alone_s
    # the overhead is added to every dispatch
    slower = fid.simulate([Arrival(0.0, "styled")], plan, fid.SampledCost(prof, records), overhead_s=0.002)["styled"][0]
    assert slower >= styled + 11 * 0.002
    # unless told when a dispatch starts, the cost is drawn from all samples
    drawn = fid.SampledCost(prof, records).exec_s("denoise", "default", fid.MODEL, 1, 4096)
    assert drawn == pytest.approx(alone_s) or drawn == pytest.approx(together_s)


def test_hand_offs_are_split_by_whether_another_worker_computed_through_them():
    records = [fid.Timed("denoise", "default", 1, 0, 1, 10.0, 11.0)]  # worker 1 busy from 10 s to 11 s
    hops = [
        (0, 1.0, 1.001, 2.0, 2.001),  # worker 0, nothing else running: 2 ms
        (0, 10.5, 10.504, 12.0, 12.004),  # sent while worker 1 computed: 8 ms, half of it contended
    ]
    assert fid.handoffs(records, hops) == {False: [pytest.approx(0.002)], True: [pytest.approx(0.008)]}
    # the simulated dispatch pays a hand-off of its own contention class
    prof = fid.profile_from_dispatches(records)
    cost = fid.SampledCost(prof, records, hops)
    cost.alongside_s = 0.0
    assert cost.exec_s("denoise", "default", fid.MODEL, 1, None) == pytest.approx(1.0 + 0.002)
    cost.alongside_s = 1.0
    assert cost.exec_s("denoise", "default", fid.MODEL, 1, None) == pytest.approx(1.0 + 0.008)


def test_prediction_uses_the_calibration_runs_measurements_only():
    records = _alone_and_together(KEYS, 0.001, 0.005)
    calibration = fid.Calibration(records=records, hops=[(0, 0.5, 0.5005, 0.6, 0.6005)])  # 1 ms hand-offs
    prof = fid.profile_from_dispatches(records)
    trace = [Arrival(0.0, "styled"), Arrival(1.0, "guided"), Arrival(1.01, "styled")]
    sim = fid.predict(trace, calibration, ProfileCost({fid.MODEL: prof}), seeds=3)
    assert len(sim["styled"]) == 2 * 3 and len(sim["guided"]) == 3
    assert min(sim["styled"]) >= 11 * (0.001 + 0.001)  # a chain of 11 calls, each 1 ms plus a 1 ms hand-off
    assert fid.predict(trace, calibration, ProfileCost({fid.MODEL: prof}), seeds=3) == sim  # seeded


def test_fidelity_cli_names_the_calibrating_and_the_predicted_run(monkeypatch):
    from legodiffusion.cli.main import app

    row = {"requests": 100, "live_p50": 0.1, "live_p95": 0.2, "sim_p50": 0.11, "sim_p95": 0.25, "err_p50": 0.1, "err_p95": 0.25}
    canned = {
        "model": "sd15",
        "workers": 2,
        "torch_threads": 1,
        "policy": "default",
        "calibration": {
            "seed": 1000,
            "rate": 5.4,
            "requests": 150,
            "dispatches": 3000,
            "profile_points": 16,
            "handoff_ms": {"alone": 0.3, "contended": 1.5},
        },
        "evaluation": {"seed": 0, "rate": 6.0, "requests": 300, "workflows": {"guided": row, "styled": row, "large": row}},
    }
    seen = {}

    def fake(models, **kw):
        seen.update(kw)
        return canned

    monkeypatch.setattr(fid, "fidelity", fake)
    result = CliRunner().invoke(app, ["fidelity", "--requests", "300", "--calibration-seed", "7"])
    assert result.exit_code == 0, result.output
    assert seen["calibration_seed"] == 7 and seen["requests"] == 300
    assert "calibrated on: trace seed 1000, 150 requests" in result.output
    assert "predicted:     trace seed 0, 300 requests" in result.output
    assert "guided" in result.output and "25%" in result.output


@pytest.mark.timing
def test_simulator_calibrated_on_one_live_run_predicts_another(tmp_path):
    result = fid.fidelity(tmp_path, requests=300, rate=6.0, seed=0, progress=lambda *_: None)
    cal, ev = result["calibration"], result["evaluation"]
    print(json.dumps(result, indent=1))  # shown with -rP
    assert result["workers"] >= 2 and len(ev["workflows"]) >= 3
    assert cal["seed"] != ev["seed"] and cal["requests"] < ev["requests"]
    for workflow, v in ev["workflows"].items():
        assert v["requests"] >= 80
        assert v["err_p50"] <= fid.P50_TOLERANCE, (workflow, v, cal)
        assert v["err_p95"] <= fid.P95_TOLERANCE, (workflow, v, cal)
