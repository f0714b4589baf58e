"""Fidelity check: one small trace served live (local backend, tiny models, real timing) and
simulated with the profile measured on this machine; p50/p95 latency per workflow compared."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from pathlib import Path

from legodiffusion.config import EngineConfig
from legodiffusion.core.coordinator import Coordinator
from legodiffusion.core.policy import make_policy
from legodiffusion.models.tiny import write_tiny_models
from legodiffusion.ops import default_registry
from legodiffusion.profiles.book import ModelProfile, OpPoint, ProfileCost
from legodiffusion.runtime.engine import Engine
from legodiffusion.sim.cluster import Simulator
from legodiffusion.sim.traces import Arrival, poisson
from legodiffusion.stats import percentile
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.expand import Expander, bind_inputs

WORKFLOWS = {
    "guided": (sd_txt2img("sd15", name="guided"), {"steps": 6, "guidance_scale": 7.0}),
    "styled": (sd_txt2img("sd15", name="styled", prompt_template="a painting of {text}"), {"steps": 4, "guidance_scale": 1.0}),
}
SIZE = 64


def _inputs(workflow: str, i: int) -> dict:
    return {"prompt": f"subject {i}", "seed": i, "height": SIZE, "width": SIZE, **WORKFLOWS[workflow][1]}


def profile_from_dispatches(records: list[tuple], model: str) -> ModelProfile:
    """A profile of what the live runtime measured: the median duration of each (operator, mode,
    batch size) over recorded dispatches, as its workers timed them."""
    groups: dict[tuple, list[float]] = {}
    for op, mode, batch, seconds in records:
        groups.setdefault((op, mode, batch), []).append(seconds)
    prof = ModelProfile(model, "cpu (in-situ)", {}, source="timed by the local runtime's workers")
    for (op, mode, batch), times in sorted(groups.items()):
        prof.ops.append(OpPoint(op, mode, batch, SIZE * SIZE, statistics.fmean(times), 0))  # mean: it sets capacity
    return prof


class _Calibration:
    """What the live runtime measures about itself: each dispatch's execution time on its worker,
    and the hand-off latency around it (sent -> started while the worker was idle, and finished ->
    seen by the event loop)."""

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.hops: list[float] = []
        self._sent: dict[int, float] = {}
        self._worker_free_at = 0.0

    def sent(self, d) -> None:
        self._sent[d.id] = time.perf_counter()

    def done(self, d, c) -> None:
        now = time.perf_counter()
        self.records.append((d.op, d.mode, len(d.items), c.end_s - c.start_s))
        sent = self._sent.pop(d.id, None)
        if sent is not None and sent >= self._worker_free_at:  # the worker was idle: a pure hand-off
            self.hops.append((c.start_s - sent) + (now - c.end_s))
        self._worker_free_at = c.end_s

    def overhead_s(self) -> float:
        return statistics.median(self.hops) if self.hops else 0.0


async def _live(folder: Path, trace: list[Arrival], policy: str, calibration: _Calibration | None = None) -> dict[str, list[float]]:
    async with Engine({"sd15": folder}, EngineConfig(workers=1, device="cpu", policy=policy)) as engine:
        if calibration is not None:
            engine.on_dispatch_sent = calibration.sent
            engine.on_dispatch_done = calibration.done
        for spec, _ in WORKFLOWS.values():
            engine.add_workflow(spec)
        for name in WORKFLOWS:  # warm: every component resident, as in the simulation
            await engine.run(name, _inputs(name, 0))
        start = time.perf_counter()
        runs = []
        for i, a in enumerate(trace):
            delay = a.t - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            runs.append((a.workflow, engine.submit(a.workflow, _inputs(a.workflow, i))))
        out: dict[str, list[float]] = {}
        for wf, run in runs:
            r = await run.future
            out.setdefault(wf, []).append(r.latency_s)
        return out


class SampledCost(ProfileCost):
    """Execution times drawn from the durations the workers measured (seeded, so deterministic):
    service-time variance drives queueing tails, which a mean alone would understate. The
    coordinator still plans with the means."""

    def __init__(self, profile: ModelProfile, records: list[tuple], seed: int = 0) -> None:
        super().__init__({profile.model_key: profile})
        self._samples: dict[tuple, list[float]] = {}
        for op, mode, batch, seconds in records:
            self._samples.setdefault((op, mode, batch), []).append(seconds)
        self._rng = random.Random(seed)

    def exec_s(self, op, mode, model, batch, px) -> float:
        samples = self._samples.get((op, mode, batch))
        if samples:
            return self._rng.choice(samples)
        return super().exec_s(op, mode, model, batch, px)


def _simulated(
    cost: ProfileCost, trace: list[Arrival], policy: str, overhead_s: float, exec_cost: ProfileCost | None = None
) -> dict[str, list[float]]:
    from legodiffusion.core.coordinator import Request

    coord = Coordinator(1, make_policy(policy), cost=cost)
    sim = Simulator(coord, exec_cost or cost, overhead_s=overhead_s)
    registry = default_registry()
    expanders = {name: Expander(spec, registry) for name, (spec, _) in WORKFLOWS.items()}
    for comp in ("text_encoder", "denoiser", "vae", "config"):  # the same warm start: resident
        sim.workers[0].admit(("sd15", comp, None), 0)
        coord.note_resident(0, ("sd15", comp, None))
    ids = itertools.count(1)
    reqs = {}
    for i, a in enumerate(trace):
        bound = bind_inputs(expanders[a.workflow].spec, _inputs(a.workflow, i))
        req = Request(next(ids), expanders[a.workflow].template(bound), bound, a.workflow, a.t)
        reqs[req.id] = req
        sim.submit_at(a.t, req)
    sim.run()
    out: dict[str, list[float]] = {}
    for rid, req in reqs.items():
        out.setdefault(req.workflow, []).append(sim.finish_s[rid] - req.arrival_s)
    return out


def fidelity(
    models_dir: Path,
    requests: int = 300,
    rate: float = 3.0,
    seed: int = 0,
    policy: str = "default",
    overhead_s: float | None = None,
    progress=print,
) -> dict:
    """Run the comparison; returns {workflow: {live_p50, live_p95, sim_p50, sim_p95, err_p50, err_p95}}."""
    folder = write_tiny_models(models_dir, families=("sd15",), extras=())["sd15"]
    mix = {name: 1.0 for name in WORKFLOWS}
    trace = poisson(rate, requests / rate, mix, seed)
    progress(f"serving {len(trace)} requests live, timing every dispatch ...")
    # The profile is measured in the same run (each dispatch's execution time as its worker timed
    # it, and the hand-off latency around it): on a shared machine whose speed drifts, a profile
    # taken minutes earlier would compare two different machines.
    calibration = _Calibration()
    live = asyncio.run(_live(folder, trace, policy, calibration))
    profile = profile_from_dispatches(calibration.records, "sd15")
    cost = ProfileCost({"sd15": profile})
    overhead_s = calibration.overhead_s() if overhead_s is None else overhead_s
    progress("simulating the same trace ...")
    sim = _simulated(cost, trace, policy, overhead_s, SampledCost(profile, calibration.records, seed))
    out = {}
    for wf in WORKFLOWS:
        lp50, lp95 = percentile(live[wf], 50), percentile(live[wf], 95)
        sp50, sp95 = percentile(sim[wf], 50), percentile(sim[wf], 95)
        out[wf] = {
            "overhead_ms": overhead_s * 1e3,
            "requests": len(live[wf]),
            "live_p50": lp50,
            "live_p95": lp95,
            "sim_p50": sp50,
            "sim_p95": sp95,
            "err_p50": abs(sp50 - lp50) / lp50,
            "err_p95": abs(sp95 - lp95) / lp95,
        }
    return out
