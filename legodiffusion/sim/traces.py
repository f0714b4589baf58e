"""Request arrival traces: Poisson, bursty, Gamma (with a coefficient of variation), drifting
popularity with single-workflow bursts, CSV replay; ``make_trace`` names them for benchmarks."""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legodiffusion.sim.workload import Workload


@dataclass(frozen=True)
class Arrival:
    t: float
    workflow: str
    inputs: dict[str, Any] = field(default_factory=dict)


def _pick(rng: random.Random, mix: dict[str, float]) -> str:
    names = list(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]


def poisson(rate: float, duration_s: float, mix: dict[str, float], seed: int = 0) -> list[Arrival]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        out.append(Arrival(t, _pick(rng, mix)))
    return out


def bursty(
    base_rate: float, multiplier: float, burst_start_s: float, burst_s: float, duration_s: float, mix: dict[str, float], seed: int = 0
) -> list[Arrival]:
    """Poisson at ``base_rate``, and ``multiplier`` times that rate from ``burst_start_s`` for ``burst_s``."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        # thinning against the peak rate keeps the process exact across the rate change
        peak = base_rate * max(1.0, multiplier)
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        rate = base_rate * (multiplier if burst_start_s <= t < burst_start_s + burst_s else 1.0)
        if rng.random() < rate / peak:
            out.append(Arrival(t, _pick(rng, mix)))


def gamma(rate: float, cv: float, duration_s: float, mix: dict[str, float], seed: int = 0) -> list[Arrival]:
    """Renewal process with Gamma inter-arrival times of mean 1/rate and coefficient of variation cv."""
    rng = random.Random(seed)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    out, t = [], 0.0
    while True:
        t += rng.gammavariate(shape, scale)
        if t >= duration_s:
            return out
        out.append(Arrival(t, _pick(rng, mix)))


def from_csv(path: str | Path) -> list[Arrival]:
    """``timestamp_s,workflow`` and optional columns, each an input of that request (numbers are
    parsed; empty cells are skipped; spaces around names and cells are ignored). Rows are sorted by
    time and shifted so the first arrives at 0. Workflow names are checked against a workload only
    when requests are made (:meth:`Workload.request` raises ``KeyError`` for an unknown one)."""
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        if reader.fieldnames is not None:
            reader.fieldnames = [h.strip() for h in reader.fieldnames]
        if reader.fieldnames is None or not {"timestamp_s", "workflow"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must include timestamp_s and workflow, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                t = float(row.pop("timestamp_s"))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: timestamp_s is not a number") from None
            workflow = (row.pop("workflow") or "").strip()
            if not workflow:
                raise ValueError(f"{path}:{line}: no workflow")
            inputs = {k: _number(v.strip()) for k, v in row.items() if k and isinstance(v, str) and v.strip()}
            out.append(Arrival(t, workflow, inputs))
    out.sort(key=lambda a: a.t)
    if out:
        t0 = out[0].t
        out = [Arrival(a.t - t0, a.workflow, a.inputs) for a in out]
    return out


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Burst:
    start_s: float
    end_s: float
    workflow: str


@dataclass
class DriftSchedule:
    """The time-varying rates of a :func:`drifting` trace (drawn from its seed alone, so a test or
    a plot can ask where the bursts are and what each workflow's share is at any time).

    ``rankings[k]`` is the popularity ranking (most popular first) at ``k * period_s``; between
    two boundaries each workflow's share moves linearly from its Zipf share under one ranking to
    its share under the next."""

    rate: float
    duration_s: float
    workflows: list[str]
    seed: int
    period_s: float
    zipf_s: float
    burst_multiplier: float
    burst_s: float
    rankings: list[list[str]]
    bursts: list[Burst]
    _weights: list[list[float]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        zipf = [1.0 / (r + 1) ** self.zipf_s for r in range(len(self.workflows))]
        total = sum(zipf)
        index = {w: i for i, w in enumerate(self.workflows)}
        self._weights = []
        for ranking in self.rankings:
            w = [0.0] * len(self.workflows)
            for r, name in enumerate(ranking):
                w[index[name]] = zipf[r] / total
            self._weights.append(w)

    def shares(self, t: float) -> dict[str, float]:
        """Each workflow's share of the background (non-burst) arrivals at time ``t``; sums to 1."""
        k = min(int(t // self.period_s), len(self._weights) - 2) if len(self._weights) > 1 else 0
        f = min(1.0, max(0.0, t / self.period_s - k))
        a, b = self._weights[k], self._weights[min(k + 1, len(self._weights) - 1)]
        return {name: (1 - f) * x + f * y for name, x, y in zip(self.workflows, a, b)}

    def burst_at(self, t: float) -> Burst | None:
        return next((b for b in self.bursts if b.start_s <= t < b.end_s), None)

    def total_rate(self, t: float) -> float:
        """Arrivals per second at ``t``: ``rate``, or ``burst_multiplier * rate`` during a burst."""
        return self.rate * (max(1.0, self.burst_multiplier) if self.burst_at(t) else 1.0)

    def rates(self, t: float) -> dict[str, float]:
        """Each workflow's arrival rate at ``t``: its share of ``rate``, plus the whole excess of
        a burst for the workflow it hits."""
        out = {name: self.rate * share for name, share in self.shares(t).items()}
        burst = self.burst_at(t)
        if burst is not None:
            out[burst.workflow] += self.total_rate(t) - self.rate
        return out

    def describe(self) -> dict[str, Any]:
        """The trace's parameters, its bursts and the most popular workflow of each period."""
        return {
            "trace": "drifting",
            "rate": self.rate,
            "duration_s": self.duration_s,
            "workflows": len(self.workflows),
            "seed": self.seed,
            "period_s": self.period_s,
            "zipf_s": self.zipf_s,
            "burst_multiplier": self.burst_multiplier,
            "burst_s": self.burst_s,
            "bursts": [{"start_s": round(b.start_s, 3), "end_s": round(b.end_s, 3), "workflow": b.workflow} for b in self.bursts],
            "top_by_period": [r[0] for r in self.rankings[:-1]],
        }


def drifting_schedule(
    rate: float,
    duration_s: float,
    workflows: list[str],
    seed: int = 0,
    period_s: float = 60.0,
    zipf_s: float = 1.0,
    burst_multiplier: float = 6.0,
    burst_s: float = 15.0,
    bursts: int = 2,
) -> DriftSchedule:
    """The rates behind :func:`drifting` with the same arguments (see there)."""
    if not workflows:
        raise ValueError("drifting needs at least one workflow")
    if period_s <= 0 or burst_s < 0 or bursts < 0:
        raise ValueError("period_s must be > 0, burst_s and bursts >= 0")
    rng = random.Random(f"drifting-schedule-{seed}")
    ranking = list(workflows)
    rng.shuffle(ranking)
    rankings = [ranking]
    for _ in range(max(1, math.ceil(duration_s / period_s))):
        # a new trend: a workflow from the less popular half rises to the top, the rest move down
        rest = list(ranking)
        rising = rest.pop(rng.randrange(len(rest) // 2, len(rest)))
        ranking = [rising, *rest]
        rankings.append(ranking)
    out, last = [], None
    if bursts and burst_s > 0 and duration_s > 0:
        slot = duration_s / bursts
        for i in range(bursts):
            length = min(burst_s, slot)
            start = i * slot + rng.uniform(0.0, slot - length)
            choices = [w for w in workflows if w != last] or list(workflows)
            last = rng.choice(choices)
            out.append(Burst(start, start + length, last))
    return DriftSchedule(rate, duration_s, list(workflows), seed, period_s, zipf_s, burst_multiplier, burst_s, rankings, out)


def drifting(
    rate: float,
    duration_s: float,
    workflows: list[str],
    seed: int = 0,
    period_s: float = 60.0,
    zipf_s: float = 1.0,
    burst_multiplier: float = 6.0,
    burst_s: float = 15.0,
    bursts: int = 2,
) -> list[Arrival]:
    """Arrivals whose workflow popularity drifts, with bursts of one workflow at a time.

    What it models: a service whose users' tastes move (a workflow becomes the trend, then fades)
    and that is hit by sudden spikes of a single workflow (a post goes viral). A system that
    sized or placed its replicas for yesterday's mix, or per workflow, must re-balance; one that
    shares base models across workflows absorbs the shift.

    Popularity: Zipf with exponent ``zipf_s`` over a ranking of ``workflows`` (seeded shuffle).
    Every ``period_s`` a workflow from the less popular half of the ranking rises to the top and
    the others move down one rank; in between, each share moves linearly from one ranking's Zipf
    share to the next's, so popularity drifts continuously. The background rate is ``rate``.

    Bursts: ``bursts`` windows of ``burst_s`` seconds, one at a random offset in each of
    ``bursts`` equal slices of the trace (never overlapping), each hitting one workflow (drawn
    uniformly, never the previous burst's): during it the total rate is ``burst_multiplier *
    rate`` and the whole excess is that workflow's, so with the default 6x it brings at least
    5/6 of the burst's arrivals. (Multiplying the single workflow's own rate instead would leave a
    burst of a 2%-share workflow barely visible.)

    Exact non-homogeneous Poisson process by thinning against the peak rate; each accepted
    arrival's workflow is drawn from the rates at its time. Sorted by ``t``; deterministic for
    ``seed``. :func:`drifting_schedule` with the same arguments gives the rates and bursts, and
    its ``describe()`` a summary."""
    sched = drifting_schedule(rate, duration_s, workflows, seed, period_s, zipf_s, burst_multiplier, burst_s, bursts)
    rng = random.Random(f"drifting-arrivals-{seed}")
    peak = rate * max(1.0, burst_multiplier)
    out: list[Arrival] = []
    t = 0.0
    while peak > 0:
        t += rng.expovariate(peak)
        if t >= duration_s:
            break
        if rng.random() * peak < sched.total_rate(t):
            rates = sched.rates(t)
            out.append(Arrival(t, rng.choices(list(rates), weights=list(rates.values()))[0]))
    return out


TRACES = ("paper", "many", "drifting", "csv")


def make_trace(
    workload_name: str,
    wl: Workload,
    rate: float,
    duration_s: float,
    seed: int = 0,
    csv_path: str | Path | None = None,
    **params: Any,
) -> list[Arrival]:
    """The trace a benchmark names, for the workload ``make_workload(workload_name, ...)`` built.

    ``paper``, ``many``, ``editing``: Poisson at ``rate`` over ``wl.mix``. ``drifting``: :func:`drifting` over
    ``wl.names`` (``params`` go to it: ``period_s``, ``burst_multiplier``, ...). ``csv``: the
    file replayed with its timestamps scaled by ``observed_rate / rate`` (the observed rate is
    one over the file's mean inter-arrival gap), so that it arrives at ``rate`` on average with
    its own burstiness and mix, and cut at ``duration_s``; a workflow the workload does not have
    is a ``ValueError`` here, before any simulation."""
    if workload_name in ("paper", "many", "editing"):
        return poisson(rate, duration_s, wl.mix, seed)
    if workload_name == "drifting":
        return drifting(rate, duration_s, wl.names, seed, **params)
    if workload_name == "csv":
        if csv_path is None:
            raise ValueError("the csv trace needs csv_path")
        arrivals = from_csv(csv_path)
        unknown = sorted({a.workflow for a in arrivals} - set(wl.names))
        if unknown:
            raise ValueError(f"{csv_path}: unknown workflows {unknown}; catalogue: {wl.names}")
        span = arrivals[-1].t - arrivals[0].t if arrivals else 0.0
        if len(arrivals) < 2 or span <= 0:
            raise ValueError(f"{csv_path}: needs at least two distinct timestamps to have a rate")
        if rate <= 0:
            raise ValueError("rate must be > 0")
        scale = (len(arrivals) - 1) / span / rate
        return [Arrival(a.t * scale, a.workflow, a.inputs) for a in arrivals if a.t * scale < duration_s]
    raise ValueError(f"unknown trace {workload_name!r}; choose one of {TRACES}")
