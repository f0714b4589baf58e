"""Fidelity check: does the simulator, calibrated on one live run, predict another?

Two live runs on the local backend (tiny sd15 model, real timing, :data:`WORKERS` worker threads,
the three workflows of :data:`WORKFLOWS`, every worker warm with every component):

1. **calibration**: a shorter Poisson trace (its own seed, 90% of the rate) served live; every
   dispatch is timed on its worker. That gives the profile (mean time per operator, mode, batch
   and pixels), the samples the simulated workers draw from (split by whether another worker was
   computing at the same time: worker threads share the GIL and the cores), and the hand-off
   latency around each dispatch (to its worker thread and back to the event loop), split alike.
2. **evaluation**: a longer trace from a different seed, served live by an engine that plans with
   the calibration profile, and simulated from the calibration run alone: nothing measured
   during the evaluation run reaches the simulator.

p50/p95 latency per workflow of the live evaluation run and of its simulation are compared.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from legodiffusion.config import EngineConfig
from legodiffusion.core.coordinator import Request, pixels
from legodiffusion.models.tiny import write_tiny_models
from legodiffusion.ops import default_registry
from legodiffusion.profiles.book import ModelProfile, OpPoint, ProfileCost
from legodiffusion.profiles.profiler import profile_path
from legodiffusion.runtime.engine import Engine
from legodiffusion.sim.cluster import Simulator
from legodiffusion.sim.traces import Arrival, poisson
from legodiffusion.stats import percentile
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.expand import Expander, bind_inputs

MODEL = "sd15"
WORKERS = 2
#: the components every worker holds from the start, live and simulated (a warm cluster)
COMPONENTS = ("text_encoder", "denoiser", "vae", "config")
#: relative error of the simulated p50 / p95 latency per workflow that the check accepts
P50_TOLERANCE = 0.25
P95_TOLERANCE = 0.40
#: a dispatch counts as contended when another worker computed for at least this share of it
CONTENDED_SHARE = 0.3
#: simulated runs (execution-time draws) pooled into one prediction
SIM_SEEDS = 5

# Three workflows on one base model, of different cost: guided (two denoiser calls a step),
# unguided behind a prompt template, and a longer guided run at 2.25x the pixels.
WORKFLOWS = {
    "guided": (sd_txt2img(MODEL, name="guided"), {"steps": 6, "guidance_scale": 7.0, "height": 64, "width": 64}),
    "styled": (
        sd_txt2img(MODEL, name="styled", prompt_template="a painting of {text}"),
        {"steps": 4, "guidance_scale": 1.0, "height": 64, "width": 64},
    ),
    "large": (sd_txt2img(MODEL, name="large"), {"steps": 8, "guidance_scale": 7.0, "height": 96, "width": 96}),
}


def _inputs(workflow: str, i: int) -> dict:
    return {"prompt": f"subject {i}", "seed": i, **WORKFLOWS[workflow][1]}


def _engine_config(policy: str, profile_dir: Path) -> EngineConfig:
    return EngineConfig(workers=WORKERS, device="cpu", policy=policy, profile_dir=profile_dir, autoscale_interval_s=0)


class Timed(NamedTuple):
    """One dispatch as its worker ran it: ``px`` is the image pixels of its first request (what the
    simulator looks costs up by), ``start``/``end`` the worker's clock."""

    op: str
    mode: str
    batch: int
    px: int
    worker: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def key(self) -> tuple:
        return (self.op, self.mode, self.batch, self.px)


@dataclass
class Calibration:
    """What the live runtime measures about itself: every dispatch as its worker timed it, and the
    hand-off latency around dispatches sent to an idle worker (sent -> started, and finished ->
    seen by the event loop)."""

    records: list[Timed] = field(default_factory=list)
    hops: list[tuple] = field(default_factory=list)  # (worker, sent, started, ended, seen)
    px: dict[int, int | None] = field(default_factory=dict)  # request id -> pixels
    _sent: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _free_at: dict[int, float] = field(default_factory=dict, init=False, repr=False)  # worker -> its last dispatch's end

    def sent(self, d) -> None:
        self._sent[d.id] = time.perf_counter()

    def done(self, d, c) -> None:
        now = time.perf_counter()
        self.records.append(Timed(d.op, d.mode, len(d.items), self.px.get(d.items[0].request_id) or 0, d.worker, c.start_s, c.end_s))
        sent = self._sent.pop(d.id, None)
        if sent is not None and sent >= self._free_at.get(d.worker, 0.0):  # the worker was idle: a pure hand-off
            self.hops.append((d.worker, sent, c.start_s, c.end_s, now))
        self._free_at[d.worker] = c.end_s


def profile_from_dispatches(records: list[Timed], model: str = MODEL) -> ModelProfile:
    """A profile of what the live runtime measured: the mean duration of each (operator, mode,
    batch size, pixels) over the recorded dispatches (the mean, as it sets capacity)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r.seconds)
    prof = ModelProfile(model, "cpu (in-situ)", {}, source="timed by the local runtime's workers in a calibration run")
    for (op, mode, batch, px), times in sorted(groups.items()):
        prof.ops.append(OpPoint(op, mode, batch, px, statistics.fmean(times), 0))
    return prof


class _Busy:
    """When each worker was executing, from the recorded dispatches."""

    def __init__(self, records: list[Timed]) -> None:
        self.spans: dict[int, list[tuple[float, float]]] = {}
        for r in records:
            self.spans.setdefault(r.worker, []).append((r.start, r.end))
        for spans in self.spans.values():
            spans.sort()

    def others(self, worker: int, a: float, b: float) -> float:
        """Seconds of [a, b] during which workers other than ``worker`` executed (summed over them)."""
        total = 0.0
        for w, spans in self.spans.items():
            if w == worker:
                continue
            i = max(0, bisect.bisect_left(spans, (a, a)) - 1)  # the span running at a, if any
            while i < len(spans) and spans[i][0] < b:
                total += max(0.0, min(spans[i][1], b) - max(spans[i][0], a))
                i += 1
        return total


def contended(records: list[Timed], share: float = CONTENDED_SHARE) -> list[bool]:
    """Per record: did another worker execute for at least ``share`` of its duration?"""
    busy = _Busy(records)
    return [busy.others(r.worker, r.start, r.end) >= share * max(r.seconds, 1e-12) for r in records]


def handoffs(records: list[Timed], hops: list[tuple], share: float = CONTENDED_SHARE) -> dict[bool, list[float]]:
    """The measured hand-off latencies (``(worker, sent, started, ended, seen)``: sent -> started
    plus ended -> seen by the event loop), split by whether another worker executed for at least
    ``share`` of them: the event loop and the workers take turns holding the GIL, so a hand-off
    waits for a busy peer to let go of it."""
    busy = _Busy(records)
    out: dict[bool, list[float]] = {False: [], True: []}
    for worker, sent, started, ended, seen in hops:
        hop = (started - sent) + (seen - ended)
        overlap = busy.others(worker, sent, started) + busy.others(worker, ended, seen)
        out[overlap >= share * max(hop, 1e-12)].append(hop)
    return out


class SampledCost(ProfileCost):
    """What a simulated dispatch costs, drawn (seeded, so deterministically) from a calibration
    run's measurements: an execution time among those measured for the same (operator, mode,
    batch, pixels), plus a hand-off latency. Both come from the measurements that ran alongside
    another worker's computation when :class:`ContendedSimulator` says this dispatch will
    (``alongside_s``: how long another worker still computes once it starts, at least ``share``
    of the profile's mean for it), else from those that ran alone: worker threads share the GIL
    and the cores, so a call runs markedly slower, and its hand-offs wait longer, while another
    worker computes. The samples' variance drives queueing tails, which means alone would
    understate. Keys never measured fall back to the profile's nearest point. The coordinator
    plans with the means."""

    def __init__(
        self, profile: ModelProfile, records: list[Timed], hops: list[tuple] = (), seed: int = 0, share: float = CONTENDED_SHARE
    ) -> None:
        super().__init__({profile.model_key: profile})
        self.share = share
        self._samples: dict[tuple, list[float]] = {}
        for r, busy in zip(records, contended(records, share)):
            self._samples.setdefault((*r.key, busy), []).append(r.seconds)
            self._samples.setdefault((*r.key, None), []).append(r.seconds)
        self._hops = handoffs(records, list(hops), share)
        self._rng = random.Random(seed)
        self.alongside_s: float | None = None  # set just before a dispatch starts; None: unknown

    def mean_s(self, op, mode, model, batch, px) -> float:
        return super().exec_s(op, mode, model, batch, px)

    def exec_s(self, op, mode, model, batch, px) -> float:
        key = (op, mode, batch, px or 0)
        mean = self.mean_s(op, mode, model, batch, px)
        busy = None if self.alongside_s is None else self.alongside_s >= self.share * mean
        self.alongside_s = None
        samples = self._samples.get((*key, busy)) or self._samples.get((*key, None))
        t = self._rng.choice(samples) if samples else mean
        hops = self._hops.get(busy) or self._hops[False] or self._hops[True]
        return t + (self._rng.choice(hops) if hops else 0.0)


class ContendedSimulator(Simulator):
    """The cluster simulator, telling a :class:`SampledCost` before each dispatch starts how long
    another worker will compute alongside it: until that worker's queue drains, or, for dispatches
    starting at the same instant on idle workers (a guided step's two denoiser calls), the
    profile's mean for the other's. (It wraps the simulator's ``_apply`` and ``_start``, reading
    only ``now`` and the workers' ``busy_until``; the fast tests of this module exercise it.)"""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pixels: dict[int, int | None] = {}
        self._together: dict[int, float] = {}

    def submit_at(self, t: float, req: Request) -> None:
        self._pixels[req.id] = pixels(req.inputs, req.template)
        super().submit_at(t, req)

    def _mean_s(self, d) -> float:
        return self.cost.mean_s(d.op, d.mode, d.model, len(d.items), self._pixels.get(d.items[0].request_id))

    def _apply(self, actions) -> None:
        self._together = {}
        if isinstance(self.cost, SampledCost):
            starting: dict[int, object] = {}  # idle worker -> the dispatch it starts now
            for d in actions.dispatches:
                if self.workers[d.worker].busy_until <= self.now:
                    starting.setdefault(d.worker, d)
            for d in starting.values():
                others = [self._mean_s(o) for o in starting.values() if o.worker != d.worker]
                if others:
                    self._together[d.id] = max(others)
        super()._apply(actions)

    def _start(self, d) -> None:
        if isinstance(self.cost, SampledCost):
            begin = max(self.now, self.workers[d.worker].busy_until)
            others = [w.busy_until - begin for w in self.workers if w.id != d.worker]
            self.cost.alongside_s = max([0.0, self._together.get(d.id, 0.0), *others])
        super()._start(d)


@contextlib.contextmanager
def _torch_threads(n: int):
    # Worker threads share the process's intra-op pool; by default it has one thread per core, so
    # two workers on a 2-core machine would each ask for both cores. One intra-op thread per
    # worker (as a Ray worker actor's default) leaves the contention that remains, the GIL and
    # the event loop, to be measured by the calibration run.
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


async def _live(
    folder: Path, trace: list[Arrival], policy: str, profile_dir: Path, calibration: Calibration | None = None
) -> dict[str, list[float]]:
    engine = Engine({MODEL: folder}, _engine_config(policy, profile_dir))
    for w in engine.workers:  # warm: every worker holds every component, as in the simulation
        for comp in COMPONENTS:
            w.models.acquire(MODEL, comp)  # before the worker threads start
            engine.coordinator.note_resident(w.id, (MODEL, comp, None))
    async with engine:
        for spec, _ in WORKFLOWS.values():
            engine.add_workflow(spec)
        for _ in range(2):  # first calls (allocator, lazy init) are not timed
            await asyncio.gather(*(engine.run(name, _inputs(name, 0)) for name in WORKFLOWS for _ in range(WORKERS)))
        if calibration is not None:
            engine.on_dispatch_sent = calibration.sent
            engine.on_dispatch_done = calibration.done
        start = time.perf_counter()
        runs = []
        for i, a in enumerate(trace):
            delay = a.t - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            inputs = _inputs(a.workflow, i)
            run = engine.submit(a.workflow, inputs)
            if calibration is not None:
                calibration.px[run.request_id] = pixels(inputs)
            runs.append((a.workflow, run))
        out: dict[str, list[float]] = {}
        for wf, run in runs:
            r = await run.future
            if not r.ok:
                raise RuntimeError(f"{wf} request {r.request_id} {r.status}: {r.error}")
            out.setdefault(wf, []).append(r.latency_s)
        return out


def simulate(
    trace: list[Arrival], plan_cost: ProfileCost, exec_cost: ProfileCost, policy: str = "default", overhead_s: float = 0.0
) -> dict[str, list[float]]:
    """Latency per workflow of ``trace`` in the simulator: the coordinator (configured as the live
    engine's) plans with ``plan_cost``, each dispatch takes ``exec_cost`` (plus ``overhead_s``);
    every worker holds every component from the start, as in the live runs."""
    cfg = _engine_config(policy, Path("."))
    coord = cfg.coordinator(WORKERS, plan_cost)
    sim = ContendedSimulator(coordinator=coord, cost=exec_cost, overhead_s=overhead_s)
    for w in range(WORKERS):
        for comp in COMPONENTS:
            sim.workers[w].admit((MODEL, comp, None), 0)
            coord.note_resident(w, (MODEL, comp, None))
    registry = default_registry()
    expanders = {name: Expander(spec, registry) for name, (spec, _) in WORKFLOWS.items()}
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


def predict(
    trace: list[Arrival],
    calibration: Calibration,
    plan_cost: ProfileCost,
    policy: str = "default",
    seeds: int = SIM_SEEDS,
) -> dict[str, list[float]]:
    """:func:`simulate` with the costs a :class:`SampledCost` draws from ``calibration``'s
    measurements, pooled over ``seeds`` draws."""
    profile = profile_from_dispatches(calibration.records)
    out: dict[str, list[float]] = {}
    for seed in range(seeds):
        cost = SampledCost(profile, calibration.records, calibration.hops, seed)
        for wf, lat in simulate(trace, plan_cost, cost, policy).items():
            out.setdefault(wf, []).extend(lat)
    return out


def _trace(requests: int, rate: float, seed: int) -> list[Arrival]:
    return poisson(rate, requests / rate, {name: 1.0 for name in WORKFLOWS}, seed)


def _compare(live: dict[str, list[float]], sim: dict[str, list[float]]) -> dict[str, dict]:
    out = {}
    for wf in WORKFLOWS:
        lp50, lp95 = percentile(live[wf], 50), percentile(live[wf], 95)
        sp50, sp95 = percentile(sim[wf], 50), percentile(sim[wf], 95)
        out[wf] = {
            "requests": len(live[wf]),
            "live_p50": lp50,
            "live_p95": lp95,
            "sim_p50": sp50,
            "sim_p95": sp95,
            "err_p50": abs(sp50 - lp50) / lp50,
            "err_p95": abs(sp95 - lp95) / lp95,
        }
    return out


def fidelity(
    models_dir: Path,
    requests: int = 300,
    rate: float = 6.0,
    seed: int = 0,
    calibration_requests: int = 150,
    calibration_rate: float | None = None,
    calibration_seed: int | None = None,
    policy: str = "default",
    progress=print,
) -> dict:
    """Calibrate on one live run, predict another. Returns ``{"calibration": {seed, rate,
    requests, ...}, "evaluation": {seed, rate, requests, wall_s, "workflows": {workflow:
    {requests, live_p50, live_p95, sim_p50, sim_p95, err_p50, err_p95}}}, ...}`` (latencies in
    seconds; errors relative to live). ``calibration["in_sample"]`` holds the same comparison for
    the calibration trace itself: where it is good but the evaluation is not, the machine changed
    speed between the runs.

    The calibration trace defaults to seed ``seed + 1000`` at 90% of ``rate``: a different trace
    at a similar load, served by the same number of worker threads, since the execution and
    hand-off times it measures include the contention between the worker threads (the GIL, the
    cores) that the evaluation run will see, and how often a dispatch meets it depends on the
    load."""
    calibration_rate = 0.9 * rate if calibration_rate is None else calibration_rate
    calibration_seed = seed + 1000 if calibration_seed is None else calibration_seed
    if calibration_seed == seed:
        raise ValueError("the calibration trace must differ from the evaluated one (use another seed)")
    folder = write_tiny_models(models_dir, families=(MODEL,), extras=())[MODEL]
    cal_trace = _trace(calibration_requests, calibration_rate, calibration_seed)
    eval_trace = _trace(requests, rate, seed)
    with _torch_threads(1), tempfile.TemporaryDirectory(prefix="fidelity-profiles-") as tmp:
        cal_dir, eval_dir = Path(tmp) / "calibration", Path(tmp) / "evaluation"
        cal_dir.mkdir()
        progress(
            f"calibration: serving {len(cal_trace)} requests live (trace seed {calibration_seed}, {calibration_rate:g}/s), timing every dispatch"
        )
        calibration = Calibration()
        t0 = time.perf_counter()
        cal_live = asyncio.run(_live(folder, cal_trace, policy, cal_dir, calibration))
        cal_wall = time.perf_counter() - t0
        profile = profile_from_dispatches(calibration.records)
        # the evaluation engine plans with the calibration profile, as the simulated coordinator does
        profile.save(profile_path(folder, "cpu", eval_dir))
        progress(f"evaluation: serving {len(eval_trace)} requests live (trace seed {seed}, {rate:g}/s)")
        t0 = time.perf_counter()
        live = asyncio.run(_live(folder, eval_trace, policy, eval_dir))
        eval_wall = time.perf_counter() - t0
    progress("simulating the evaluation trace from the calibration run's measurements alone")
    sim = predict(eval_trace, calibration, ProfileCost({MODEL: profile}), policy)
    # the calibration engine planned without a profile (defaults); so does its simulation
    in_sample = _compare(cal_live, predict(cal_trace, calibration, ProfileCost({}), policy))
    busy = contended(calibration.records)
    hops = handoffs(calibration.records, calibration.hops)
    return {
        "model": MODEL,
        "workers": WORKERS,
        "torch_threads": 1,
        "policy": policy,
        "calibration": {
            "seed": calibration_seed,
            "rate": calibration_rate,
            "requests": len(cal_trace),
            "dispatches": len(calibration.records),
            "profile_points": len(profile.ops),
            "contended_share": sum(busy) / max(1, len(busy)),  # of dispatches, ran alongside another worker's
            "utilisation": sum(r.seconds for r in calibration.records) / (WORKERS * cal_trace[-1].t),
            "handoff_ms": {  # mean hand-off latency, with the other worker idle / computing
                "alone": statistics.fmean(hops[False]) * 1e3 if hops[False] else 0.0,
                "contended": statistics.fmean(hops[True]) * 1e3 if hops[True] else 0.0,
            },
            "wall_s": cal_wall,
            "in_sample": {wf: {k: v[k] for k in ("err_p50", "err_p95")} for wf, v in in_sample.items()},
        },
        "evaluation": {"seed": seed, "rate": rate, "requests": len(eval_trace), "wall_s": eval_wall, "workflows": _compare(live, sim)},
    }
