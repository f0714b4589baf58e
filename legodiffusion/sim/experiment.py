"""Run a trace through the simulator under a named system, and find the limits the paper reports
(max sustainable rate, burst tolerance, GPUs needed) over several trace seeds.

Scoring: a request meets its SLO when it finishes by its deadline; rejected requests and requests
unfinished when the run ends (the last arrival plus a drain window) count as misses; requests
arriving during the warm-up run but are not scored. Latency percentiles are over the scored
requests that succeeded.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from legodiffusion.core.bundle import BundlePolicy, allocate
from legodiffusion.core.coordinator import Coordinator
from legodiffusion.core.policy import MicroServingPolicy, SchedulingPolicy
from legodiffusion.sim.cluster import Simulator
from legodiffusion.sim.traces import Arrival
from legodiffusion.sim.workload import Workload
from legodiffusion.stats import mean_ci, percentile

SYSTEMS = (
    "ours",
    "fcfs",
    "bundle-static",
    "bundle-auto",
    "no-sharing",
    "static-partitions",
    "no-adaptive-parallelism",
    "no-cross-request-batching",
    "no-admission",
    "profile-admission",
    "latest-start",
    "no-prefetch",
    "no-eviction-cost",
    "no-batch-sizing",
    "no-urgent-keep",
)
TARGET = 0.9
REBALANCE_S = 30.0


def make_system(system: str, workload: Workload, gpus: int, mix: dict[str, float] | None = None) -> SchedulingPolicy:
    """The named system; static allocations follow ``mix`` (a trace's own workflow shares:
    a static deployment is configured for the traffic it will see), else the workload's."""
    mix = mix or workload.mix
    demand = workload.demand(mix)
    capacity = getattr(workload.cost, "memory_bytes", None)
    replica = replica_bytes(workload)
    if system == "ours":
        return MicroServingPolicy("default")
    if system == "fcfs":
        return MicroServingPolicy("fcfs", ordering="fcfs", admission=False)
    if system in ("bundle", "bundle-static", "bundle-auto"):  # "bundle" alone: the static deployment
        return BundlePolicy(
            name="bundle-static" if system == "bundle" else system,
            demand=demand,
            n_workers=gpus,
            rebalance_s=REBALANCE_S if system == "bundle-auto" else None,
            memory=replica,
            capacity=capacity,
        )
    if system == "no-sharing":  # private model copies per workflow, on a demand-proportional split
        parts = allocate(demand, gpus, replica, capacity)
        return MicroServingPolicy(system, share=False, partition=parts)
    if system == "static-partitions":  # shared models, each on a fixed demand-proportional split
        per_model, memory = model_demand(workload, mix)
        return MicroServingPolicy(system, partition=allocate(per_model, gpus, memory, capacity))
    if system == "no-adaptive-parallelism":
        return MicroServingPolicy(system, adaptive=False)
    if system == "no-cross-request-batching":
        return MicroServingPolicy(system, cross_request=False)
    if system == "no-admission":
        return MicroServingPolicy(system, admission=False)
    if system == "profile-admission":  # admission drains the queue at the profile's batch-1 rate, no late-finish margin
        return MicroServingPolicy(system, measured_admission=False)
    if system == "latest-start":  # deadline - whole work, fixed at arrival (not re-evaluated)
        return MicroServingPolicy(system, ordering="slack")
    if system == "no-prefetch":  # models load only when a call needs them
        return MicroServingPolicy(system, prefetch=False)
    if system == "no-eviction-cost":  # placement ignores what a load evicts, and loads rather than wait for a holder
        return MicroServingPolicy(system, evictions=False)
    if system == "no-urgent-keep":  # a request with little slack left shares its worker's queue
        return MicroServingPolicy(system, urgent_s=0.0)
    if system == "no-batch-sizing":  # batches as large as the limit, whether or not they save time
        return MicroServingPolicy(system, batch_sizing=False)
    raise ValueError(f"unknown system {system!r}; choose one of {SYSTEMS}")


def replica_bytes(workload: Workload) -> dict[str, int]:
    """Device memory a workflow's whole pipeline needs: its weights plus the largest activation
    of its calls (guidance branches batched, as inside a pipeline call)."""
    act = getattr(workload.cost, "activation_bytes", None)
    out = {}
    for name, weights in workload.pipeline_bytes().items():
        px = workload.pixels(name)
        peak = max((act(n.op, n.mode, n.model, 2, px) for n in workload.template(name).nodes), default=0) if act else 0
        out[name] = weights + peak
    return out


def model_demand(workload: Workload, mix: dict[str, float] | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """Expected work per model (popularity x profiled seconds of its calls) and its weight bytes."""
    demand: dict[str, float] = {}
    memory: dict[str, int] = {}
    pairs: set[tuple[str, str]] = set()
    for name, share in (mix or workload.mix).items():
        px = workload.pixels(name)
        for n in workload.template(name).nodes:
            if n.model is not None and n.component is not None:
                demand[n.model] = demand.get(n.model, 0.0) + share * workload.cost.exec_s(n.op, n.mode, n.model, 1, px)
        pairs.update(components(workload, name))
    for model, comp in pairs:
        memory[model] = memory.get(model, 0) + workload.cost.weight_bytes(model, comp)
    return demand, {m: memory.get(m, 0) for m in demand}


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


def trace_mix(arrivals: list[Arrival]) -> dict[str, float]:
    """Each workflow's share of a trace's requests."""
    counts: dict[str, int] = {}
    for a in arrivals:
        counts[a.workflow] = counts.get(a.workflow, 0) + 1
    return {k: n / len(arrivals) for k, n in counts.items()}


def drain_window(workload: Workload) -> float:
    return 3 * workload.slo_scale * max(workload.solo_s.values())


def run_trace(
    arrivals: list[Arrival],
    workload: Workload,
    system: str,
    gpus: int,
    drain_s: float | None = None,
    warmup_s: float = 0.0,
    progress=None,
    stop_below: float | None = None,
) -> SimResult:
    """Simulate ``arrivals`` on ``gpus`` reference GPUs under ``system`` (see the module's scoring).

    With ``stop_below``, the run stops as soon as the scored requests already missed make that
    attainment unreachable (overloaded runs are the slow ones, and a search only needs to know
    they fail); the attainment it then reports is an upper bound, below ``stop_below``."""
    if system == "pooled":
        return pooled(arrivals, workload, gpus, drain_s, warmup_s)
    mix = trace_mix(arrivals) or workload.mix
    policy = make_system(system, workload, gpus, mix)
    coord = Coordinator(gpus, policy, cost=workload.cost)
    sim = Simulator(
        coord,
        workload.cost,
        budget_bytes=getattr(workload.cost, "memory_bytes", None),
        approx=workload.approx,
        step_cache=workload.step_cache,
    )
    deploy(sim, policy, workload, mix)
    ids = itertools.count(1)
    reqs = {}
    for a in arrivals:
        req = workload.request(next(ids), a.workflow, a.t, a.inputs)
        reqs[req.id] = req
        sim.submit_at(a.t, req)
    end = (arrivals[-1].t if arrivals else 0.0) + (drain_s if drain_s is not None else drain_window(workload))
    t0 = time.perf_counter()
    scored = sum(1 for r in reqs.values() if r.arrival_s >= warmup_s)
    allowed = (1.0 - stop_below) * scored if stop_below is not None else float("inf")
    missed = 0

    def count(o, now) -> None:
        nonlocal missed
        req = reqs[o.request_id]
        if req.arrival_s >= warmup_s and (o.status != "succeeded" or now > req.deadline_s + 1e-9):
            missed += 1

    sim.on_finish = count
    while sim._events and sim._events[0][0] <= end and missed <= allowed:
        sim.run(until_s=end, max_events=2000)
        if progress is not None:
            progress(min(sim.now, end) / end)
    wall = time.perf_counter() - t0
    outcomes = {rid: (o.status, sim.finish_s.get(rid)) for rid, o in sim.outcomes.items()}
    config = policy.describe() if isinstance(policy, BundlePolicy) else ""
    result = _score(system, gpus, reqs, outcomes, warmup_s, wall, sim.now, sim.dispatches, config)
    if missed > allowed:  # stopped early: at most everything else met
        result.attainment = 1.0 - missed / max(1, result.requests)
    return result


def components(workload: Workload, workflow: str) -> list[tuple[str, str]]:
    """The (model, component) pairs a workflow's calls use, largest first."""
    pairs = {(n.model, n.component) for n in workload.template(workflow).nodes if n.model is not None and n.component is not None}
    return sorted(pairs, key=lambda mc: (-workload.cost.weight_bytes(*mc), mc))


def deploy(sim: Simulator, policy: SchedulingPolicy, workload: Workload, mix: dict[str, float]) -> None:
    """The state every system starts from, as after a deployment and before traffic: each node's
    host memory holds the models' weights; a monolithic replica holds its pipelines; micro-serving
    starts with the models laid out in proportion to their demand (what its per-model scaling
    aims at). Requests in the warm-up are not scored either way."""
    everything = sorted({mc for name in mix for mc in components(workload, name)}, key=lambda mc: -workload.cost.weight_bytes(*mc))
    sim.warm_hosts(everything)
    per_workflow = isinstance(policy, BundlePolicy) or policy.isolate_workflows
    if isinstance(policy, BundlePolicy):
        bins = policy.bins
    elif getattr(policy, "partition", None) is not None:
        bins = policy.partition
    elif per_workflow:
        bins = allocate(workload.demand(mix), len(sim.workers), replica_bytes(workload), getattr(workload.cost, "memory_bytes", None))
    else:
        demand, memory = model_demand(workload, mix)
        bins = allocate(demand, len(sim.workers), memory, getattr(workload.cost, "memory_bytes", None))
    for gpu, owners in enumerate(bins):
        for owner in sorted(owners, key=lambda k: (-mix.get(k, 0.0), k)):
            if per_workflow:
                keys = [(m, c, owner) for m, c in components(workload, owner)]
            else:
                keys = [(m, c, None) for m, c in everything if m == owner]
            if not sim.preload(gpu, keys):
                break


def _score(system, gpus, reqs, outcomes, warmup_s, wall, sim_s, dispatches, config) -> SimResult:
    met = rejected = 0
    lat: dict[str, list[float]] = {}
    scored = {rid: req for rid, req in reqs.items() if req.arrival_s >= warmup_s}
    for rid, req in scored.items():
        status, done = outcomes.get(rid, (None, None))
        if status == "rejected":
            rejected += 1
        elif status == "succeeded":
            lat.setdefault(req.workflow, []).append(done - req.arrival_s)
            if done <= req.deadline_s + 1e-9:
                met += 1
    unfinished = sum(1 for rid in scored if rid not in outcomes)
    return SimResult(system, gpus, len(scored), met, rejected, unfinished, met / max(1, len(scored)), lat, wall, sim_s, dispatches, config)


def pooled(arrivals: list[Arrival], workload: Workload, gpus: int, drain_s: float | None = None, warmup_s: float = 0.0) -> SimResult:
    """The fully pooled whole-request ideal: any GPU runs any request to completion in its solo
    time, no memory limit, no loads, no transfers, no overhead; one FCFS queue (M/G/c)."""
    free = [0.0] * gpus
    end = (arrivals[-1].t if arrivals else 0.0) + (drain_s if drain_s is not None else drain_window(workload))
    reqs, outcomes = {}, {}
    for rid, a in enumerate(arrivals, start=1):
        req = workload.request(rid, a.workflow, a.t, a.inputs)
        reqs[rid] = req
        start = max(a.t, heapq.heappop(free))
        done = start + workload.solo_of(req)
        heapq.heappush(free, done)
        if done <= end:
            outcomes[rid] = ("succeeded", done)
    return _score("pooled", gpus, reqs, outcomes, warmup_s, 0.0, end, 0, "any GPU runs any whole request (FCFS M/G/c, no memory limit)")


def fluid_rate(workload: Workload, gpus: int, mix: dict[str, float] | None = None) -> float:
    """The fluid bound: GPUs / mean profiled GPU-seconds per request (every model call at batch 1)."""
    mix = mix or workload.mix
    total = sum(mix.values())
    work = sum(share / total * workload.solo_s[name] for name, share in mix.items())
    return gpus / work


@dataclass
class RatePoint:
    rate: float
    attainments: list[float]

    @property
    def mean(self) -> float:
        return sum(self.attainments) / len(self.attainments)


def search_max(
    mean_at: Callable[[float], float], lo: float, hi: float, iterations: int = 6, confirm: tuple[float, ...] = (1.05, 1.1, 1.2)
) -> float:
    """The largest x with ``mean_at(x) >= TARGET``, found by bisection and then confirmed by the
    points above it: when one of ``x * c`` for c in ``confirm`` passes too (attainment need not
    fall monotonically), the search continues from there. 0 when even ``lo`` fails."""
    if mean_at(lo) < TARGET:
        return 0.0
    while mean_at(hi) >= TARGET:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return lo
    while True:
        a, b = lo, hi
        for _ in range(iterations):
            mid = (a + b) / 2
            if mean_at(mid) >= TARGET:
                a = mid
            else:
                b = mid
        higher = [a * c for c in confirm if a * c < hi * 2 and mean_at(a * c) >= TARGET]
        if not higher:
            return a
        lo = max(higher)
        hi = max(hi, lo * 1.25)


class Evaluator:
    """Attainment per seed at a point, memoised (a search visits points more than once).

    ``run_each(jobs)`` takes ``(seed index, x)`` pairs and returns one attainment per pair (it may
    run them in parallel); calling the evaluator at ``x`` runs every one of ``seeds`` seeds there
    and returns their mean, which is what :func:`search_max` bisects on."""

    def __init__(self, run_each: Callable[[list[tuple[int, float]]], list[float]], seeds: int) -> None:
        self.run_each = run_each
        self.seeds = seeds
        self.points: dict[float, RatePoint] = {}
        self._single: dict[tuple[int, float], float] = {}  # one seed's attainment at a point
        self.seed_max: list[float] = []  # each seed's own largest passing x (per_seed_max)

    def __call__(self, x: float) -> float:
        x = round(x, 6)
        if x not in self.points:
            self.points[x] = RatePoint(x, list(self.run_each([(i, x) for i in range(self.seeds)])))
        return self.points[x].mean

    def _at(self, i: int, x: float) -> float:
        point = self.points.get(x)
        return point.attainments[i] if point is not None else self._single[(i, x)]

    def per_seed_max(self, refine: int = 4) -> tuple[float, float]:
        """Mean and 95% half-width over seeds of each seed's own largest passing x.

        A seed's bracket is its largest passing point among those the search visited (every visited
        point below it passes too) and the first visited point above that fails; the bracket is
        then bisected ``refine`` times on that seed alone, so a seed whose own limit lies far from
        the mean's is not scored at the nearest point the mean's search happened to visit. A seed
        that fails the lowest visited point scores 0, as :func:`search_max` does."""
        xs = sorted(self.points)
        if not xs:
            return 0.0, 0.0
        brackets = []
        for i in range(self.seeds):
            top, fail = 0.0, None
            for x in xs:
                if self.points[x].attainments[i] < TARGET:
                    fail = x
                    break
                top = x
            brackets.append([top, fail])
        for _ in range(refine):
            open_ = [i for i, (top, fail) in enumerate(brackets) if top > 0 and fail is not None]
            jobs = [(i, round((brackets[i][0] + brackets[i][1]) / 2, 6)) for i in open_]
            todo = [j for j in jobs if j[1] not in self.points and j not in self._single]
            for job, got in zip(todo, self.run_each(todo) if todo else []):
                self._single[job] = got
            for i, mid in jobs:
                brackets[i][0 if self._at(i, mid) >= TARGET else 1] = mid
        self.seed_max = [top for top, _ in brackets]
        return mean_ci(self.seed_max)

    def curve(self) -> list[tuple[float, float, float]]:
        """(x, mean attainment, 95% half-width) at every visited point."""
        return [(x, *mean_ci(self.points[x].attainments)) for x in sorted(self.points)]
