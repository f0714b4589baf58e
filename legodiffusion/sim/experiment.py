"""Run a trace through the simulator under a named system, and search for the limits the paper
reports (max sustainable rate, burst tolerance, GPUs needed) by bisection."""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field

from legodiffusion.core.coordinator import Coordinator
from legodiffusion.core.policy import BundlePolicy, MicroServingPolicy, SchedulingPolicy
from legodiffusion.sim.cluster import Simulator
from legodiffusion.sim.traces import Arrival
from legodiffusion.sim.workload import Workload
from legodiffusion.stats import percentile

SYSTEMS = (
    "ours",
    "fcfs",
    "bundle",
    "no-sharing",
    "no-per-model-scaling",
    "no-adaptive-parallelism",
    "no-cross-request-batching",
    "no-admission",
)
TARGET = 0.9


def make_system(system: str, workload: Workload, gpus: int) -> SchedulingPolicy:
    if system == "ours":
        return MicroServingPolicy("default")
    if system == "fcfs":
        return MicroServingPolicy("fcfs", ordering="fcfs", admission=False)
    if system == "bundle":
        # its best fair configuration: replicas in proportion to demand, re-allocated every
        # 30 s from the observed work; moved replicas pay the profiled load of their new pipeline
        return BundlePolicy(
            demand=workload.demand(),
            n_workers=gpus,
            autoscale_s=30.0,
            memory=workload.pipeline_bytes(),
            capacity=getattr(workload.cost, "memory_bytes", None),
        )
    if system == "no-sharing":
        return MicroServingPolicy(system, share=False)
    if system == "no-per-model-scaling":
        return MicroServingPolicy(system, static_partition=workload.models())
    if system == "no-adaptive-parallelism":
        return MicroServingPolicy(system, adaptive=False)
    if system == "no-cross-request-batching":
        return MicroServingPolicy(system, cross_request=False)
    if system == "no-admission":
        return MicroServingPolicy(system, admission=False)
    raise ValueError(f"unknown system {system!r}; choose one of {SYSTEMS}")


@dataclass
class SimResult:
    system: str
    gpus: int
    requests: int
    met: int
    rejected: int
    unfinished: int
    attainment: float
    latency_by_workflow: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    sim_s: float = 0.0
    dispatches: int = 0
    config: str = ""

    def percentiles(self) -> dict[str, tuple[float, float]]:
        return {wf: (percentile(lat, 50), percentile(lat, 95)) for wf, lat in self.latency_by_workflow.items()}


def run_trace(
    arrivals: list[Arrival], workload: Workload, system: str, gpus: int, drain_s: float | None = None, warmup_s: float = 0.0, progress=None
) -> SimResult:
    """Simulate ``arrivals`` on ``gpus`` reference GPUs; a request meets its SLO when it finishes
    by its deadline (rejections and requests unfinished at the end count as misses). Requests
    arriving before ``warmup_s`` run but are not scored (cold model loads)."""
    policy = make_system(system, workload, gpus)
    coord = Coordinator(gpus, policy, cost=workload.cost)
    sim = Simulator(coord, workload.cost, budget_bytes=getattr(workload.cost, "memory_bytes", None))
    ids = itertools.count(1)
    reqs = {}
    for a in arrivals:
        req = workload.request(next(ids), a.workflow, a.t, a.inputs)
        reqs[req.id] = req
        sim.submit_at(a.t, req)
    end = (arrivals[-1].t if arrivals else 0.0) + (
        drain_s if drain_s is not None else 3 * workload.slo_scale * max(workload.solo_s.values())
    )
    t0 = time.perf_counter()
    if progress is None:
        sim.run(until_s=end)
    else:
        while sim._events and sim._events[0][0] <= end:
            sim.run(until_s=end, max_events=20000)
            progress(min(sim.now, end) / end)
    wall = time.perf_counter() - t0
    met = rejected = 0
    lat: dict[str, list[float]] = {}
    scored = {rid: req for rid, req in reqs.items() if req.arrival_s >= warmup_s}
    for rid, req in scored.items():
        outcome = sim.outcomes.get(rid)
        if outcome is None:
            continue
        if outcome.status == "rejected":
            rejected += 1
            continue
        if outcome.status == "succeeded":
            done = sim.finish_s[rid]
            lat.setdefault(req.workflow, []).append(done - req.arrival_s)
            if done <= req.deadline_s + 1e-9:
                met += 1
    unfinished = sum(1 for rid in scored if rid not in sim.outcomes)
    config = ""
    if isinstance(policy, BundlePolicy):
        config = "bundle replicas (initial, by demand x solo work; workflows packed by memory when GPUs < workflows): " + ", ".join(
            f"{k}={v}" for k, v in sorted(policy.initial.items())
        )
        config += f"; autoscaling every 30 s with the profiled load time ({len(policy.decisions)} re-allocations)"
    return SimResult(
        system, gpus, len(scored), met, rejected, unfinished, met / max(1, len(scored)), lat, wall, sim.now, sim.dispatches, config
    )


def bisect_max(ok, lo: float, hi: float, iterations: int = 7) -> float:
    """Largest x in [lo, hi] with ok(x), assuming ok is monotone decreasing; 0 when even lo fails."""
    if not ok(lo):
        return 0.0
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def median(values):
    return statistics.median(values) if values else 0.0
