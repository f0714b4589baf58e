"""What the paper experiments run on (benchmarks/paper.py, benchmarks/fixed_rate.py): the
workloads, built once per process, their traces by seed, bursts included, the fluid bound of each,
the systems compared and the data files every result is stamped with."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from legodiffusion.sim.approx import MODELS as CACHE_MODELS  # noqa: E402
from legodiffusion.sim.approx import make_cache_model  # noqa: E402
from legodiffusion.sim.experiment import fluid_rate, trace_mix  # noqa: E402
from legodiffusion.sim.reference import ReferenceCost  # noqa: E402
from legodiffusion.sim.step_skip import MODELS as STEP_CACHE_MODELS  # noqa: E402
from legodiffusion.sim.step_skip import make_step_cache_model  # noqa: E402
from legodiffusion.sim.traces import Arrival, drifting, make_trace, poisson  # noqa: E402
from legodiffusion.sim.workload import make_workload  # noqa: E402

WORKLOADS = ("paper", "many", "drifting", "csv")  # what `all` runs; `--workloads editing` adds the editing mix
HEADLINE = ("ours", "fcfs", "bundle-static", "bundle-auto", "pooled")
ABLATIONS = (
    "ours",
    "fcfs",
    "latest-start",
    "no-admission",
    "profile-admission",
    "no-prefetch",
    "no-eviction-cost",
    "no-urgent-keep",
    "no-batch-sizing",
    "no-adaptive-parallelism",
    "no-cross-request-batching",
    "no-sharing",
    "static-partitions",
)
CSV_TRACE = ROOT / "benchmarks" / "traces" / "replay.csv"
DATA_FILES = [
    ROOT / "legodiffusion" / "sim" / "data" / "h100.json",
    ROOT / "legodiffusion" / "sim" / "workload.py",
    ROOT / "legodiffusion" / "sim" / "traces.py",
    CSV_TRACE,
]
BURST_S = 30.0
DRIFT_BURST, DRIFT_BURST_S = 3.0, 10.0  # the drifting trace's one-workflow bursts: x3 the total rate for 10 s
DESCRIBE = {
    "paper": "the paper's 12 workflows over SD3-medium / SD3.5-large(-turbo) / FLUX.1-dev/schnell at 1024 px, 4-50 steps, 0-2 ControlNets, 0-1 LoRAs, skewed popularity; Poisson arrivals",
    "many": "40 seeded workflows over 7 base models (FLUX.1-dev/schnell, SD3.5-large, SD3-medium, FLUX.2-klein-4B, Z-Image-Turbo, Qwen-Image) with 0-1 LoRAs, 0-2 ControlNets, 512-1024 px, Zipf popularity; Poisson arrivals",
    "drifting": "the paper workflows with Zipf popularity whose ranking changes every 60 s, and two 10 s bursts that each hit one workflow (the total rate x3, the excess all to that workflow)",
    "editing": "the paper workflows plus edits, a quarter of the requests: image-to-image at strength 0.6 (FLUX.1-dev/schnell, SD3.5-large), inpainting (FLUX.1-dev at 0.85, SD3.5-large at 1) and two-stage hires (512² then 1024² at 0.5); Poisson arrivals",
    "csv": "benchmarks/traces/replay.csv replayed (gamma arrivals, CV 2.5, the paper's popularity ranking reversed), its timestamps scaled to the rate; seed s starts the replay s/7 of the way in",
}

_WORKLOADS: dict = {}
_BUILDING = threading.Lock()  # the systems of one experiment search side by side, in threads
#: "NAME@MODEL[+MODEL]": workload NAME with every request opting in to the approximate cache,
#: whose lookups the simulator answers from cache model MODEL (legodiffusion/sim/approx.py),
#: and/or to step caching, whose skips it draws from step cache model MODEL (sim/step_skip.py)
CACHED = "@"


def workload(name: str):
    with _BUILDING:
        if name not in _WORKLOADS:
            base, _, opts = name.partition(CACHED)
            tokens = opts.split("+") if opts else []
            approx = next((t for t in tokens if t in CACHE_MODELS), None)
            step = next((t for t in tokens if t in STEP_CACHE_MODELS), None)
            _WORKLOADS[name] = make_workload(
                base, ReferenceCost(), seed=0, approx=make_cache_model(approx), step_cache=make_step_cache_model(step)
            )
        return _WORKLOADS[name]


def trace(name: str, rate: float, duration: float, seed: int, burst: float | None = None) -> list[Arrival]:
    """The workload's trace; with ``burst`` a burst of that multiple of the rate for 30 s a third
    of the way in (on ``drifting``, its own one-workflow bursts take the multiple instead of 6)."""
    wl = workload(name)
    name = name.partition(CACHED)[0]
    if name == "drifting":
        return drifting(rate, duration, wl.names, seed, burst_multiplier=DRIFT_BURST if burst is None else burst, burst_s=DRIFT_BURST_S)
    if name == "csv":
        full = make_trace("csv", wl, rate, 10 * duration, csv_path=CSV_TRACE)
        span = full[-1].t if full else 0.0
        offset = span * ((seed - 1) % 7) / 7
        base = [Arrival(a.t - offset, a.workflow, a.inputs) for a in full if offset <= a.t < offset + duration]
    else:
        base = make_trace(name, wl, rate, duration, seed)
    if burst is None or burst <= 1.0:
        return base
    start = duration / 3
    extra = [Arrival(start + a.t, a.workflow, a.inputs) for a in poisson(rate * (burst - 1.0), BURST_S, wl.mix, seed + 1000)]
    return sorted(base + extra, key=lambda a: a.t)


def fluid(name: str, gpus: int, duration: float) -> float:
    """The fluid bound for the workload's traffic (its trace's own mix: the replay and the
    drifting trace do not follow the declared popularity)."""
    return fluid_rate(workload(name), gpus, trace_mix(trace(name, 1.0, max(duration, 600.0), 1)))


def warmup(duration: float) -> float:
    return min(30.0, duration / 5)
