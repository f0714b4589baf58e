"""The paper's experiments in simulation, on the serving code's coordinator and policies, with the
reference H100 cost model (legodiffusion/sim/data/h100.json: every number sourced) over four
workloads, several trace seeds, and two idealised references beside every figure.

    python benchmarks/paper.py all                 # every experiment on every workload (about 2.5 hours on 2 cores; rate alone 32 min with --seeds 4)
    python benchmarks/paper.py rate  [--workloads paper many] [--gpus 8 16 32]
    python benchmarks/paper.py burst | gpus | ablations | overload
    python benchmarks/paper.py all --quick         # 2 seeds, short traces: a smoke run
    python benchmarks/paper.py rate --approx-cache nirvana   # "with caching" rows: results/paper_rate_cached.json
    python benchmarks/paper.py rate --step-cache fbcache     # with step caching: results/paper_rate_stepcache.json
    python benchmarks/paper.py rate --workloads editing   # the editing mix: results/paper_rate_editing.json
    python benchmarks/paper.py rate --workloads drifting --systems ours fcfs --seeds 10 --first-seed 6   # other seeds: *_seeds6-15

Results of the default workloads go to results/paper_<experiment>.json; any other selection to
results/paper_<experiment>_<workloads>.json, so a partial run never overwrites the full one; with
--approx-cache, ``_cached`` follows.

Systems: ``ours`` (the default policy), ``fcfs`` (ours with arrival order and no admission),
``bundle`` (the better of ``bundle-static`` and ``bundle-auto`` at each point: whole-pipeline
replicas, one request at a time per GPU, one FCFS queue per workflow, demand-proportional
allocation with small pipelines sharing a GPU), and the references: the fluid bound (GPUs / mean
profiled GPU-seconds per request) and ``pooled`` (any GPU runs any whole request, no memory limit,
no loads: FCFS M/G/c). Every figure is a mean over trace seeds with its 95% interval. Each
results JSON is stamped with the commit, a hash of the data files and the command;
benchmarks/results/paper.md is regenerated from them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, report, stamp  # noqa: E402
from legodiffusion.sim.approx import MODELS as CACHE_MODELS  # noqa: E402
from legodiffusion.sim.approx import make_cache_model  # noqa: E402
from legodiffusion.sim.experiment import TARGET, Evaluator, fluid_rate, run_trace, search_max, trace_mix  # noqa: E402
from legodiffusion.sim.reference import ReferenceCost  # noqa: E402
from legodiffusion.sim.step_skip import MODELS as STEP_CACHE_MODELS  # noqa: E402
from legodiffusion.sim.step_skip import make_step_cache_model  # noqa: E402
from legodiffusion.sim.traces import Arrival, drifting, make_trace, poisson  # noqa: E402
from legodiffusion.sim.workload import make_workload  # noqa: E402
from legodiffusion.stats import mean_ci, paired_ci  # noqa: E402

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
PAPER = {"rate": "up to 3x", "burst": "up to 8x", "gpus": "up to 3x fewer"}
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


def attain(job: tuple) -> float:
    """One simulation: (workload, system, gpus, rate, burst, duration, seed) -> attainment."""
    name, system, gpus, rate, burst, duration, seed = job
    arrivals = trace(name, rate, duration, seed, burst)
    return run_trace(arrivals, workload(name), system, int(gpus), warmup_s=warmup(duration), stop_below=TARGET).attainment


def admitted_outcome(job: tuple) -> tuple[float, float]:
    """One full simulation: (share of scored requests admitted, share of admitted that met)."""
    name, system, gpus, rate, duration, seed = job
    r = run_trace(trace(name, rate, duration, seed), workload(name), system, int(gpus), warmup_s=warmup(duration))
    admitted = r.requests - r.rejected
    return admitted / max(1, r.requests), r.met / max(1, admitted)


class Runner:
    def __init__(self, args) -> None:
        self.args = args
        self.seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        self.pool = ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else None
        if self.pool is not None:  # forked now, before any search thread holds a lock a child would inherit held
            self.pool.submit(int).result()

    def across(self, search, name, systems, *rest) -> dict:
        """``{s: search(name, s, *rest)}`` for every system, the searches side by side in threads:
        a search waits on its own seeds, so alone it leaves processes idle between rounds (5 seeds
        on 2 processes, runs cut short when they cannot pass); together they keep the pool busy.
        Each search is deterministic, so the results are those of running them one by one."""
        systems = list(systems)
        if self.pool is None or len(systems) < 2:
            return {s: search(name, s, *rest) for s in systems}
        with ThreadPoolExecutor(max_workers=len(systems)) as threads:
            return dict(zip(systems, threads.map(lambda s: search(name, s, *rest), systems)))

    def seeds_at(self, name, system, gpus, rate) -> list[float]:
        return self.each(name, system, gpus, [(i, rate) for i in range(len(self.seeds))])

    def each(self, name, system, gpus, points, base=None) -> list[float]:
        """Attainment of (seed index, x) pairs: x is the rate, or with ``base`` the burst multiple
        on that rate."""
        jobs = [
            (name, system, gpus, x if base is None else base, None if base is None else x, self.args.duration, self.seeds[i])
            for i, x in points
        ]
        return list(self.pool.map(attain, jobs) if self.pool else map(attain, jobs))

    def admitted_at(self, name, system, gpus, rate) -> list[tuple[float, float]]:
        jobs = [(name, system, gpus, rate, self.args.duration, s) for s in self.seeds]
        return list(self.pool.map(admitted_outcome, jobs) if self.pool else map(admitted_outcome, jobs))

    def max_rate(self, name, system, gpus) -> dict:
        ev = Evaluator(lambda points: self.each(name, system, gpus, points), len(self.seeds))
        bound = fluid(name, gpus, self.args.duration)
        best = search_max(ev, 0.1 * bound, 0.8 * bound, iterations=self.args.iterations)
        mean, half = ev.per_seed_max(refine=self.args.iterations)
        return {"max_rate": best, "per_seed_mean": mean, "per_seed_ci95": half, "per_seed": ev.seed_max, "curve": ev.curve()}

    def max_burst(self, name, system, gpus, base) -> dict:
        ev = Evaluator(lambda points: self.each(name, system, gpus, points, base), len(self.seeds))
        best = search_max(ev, 1.0, 4.0, iterations=self.args.iterations)
        mean, half = ev.per_seed_max(refine=self.args.iterations)
        return {"max_multiplier": best, "per_seed_mean": mean, "per_seed_ci95": half, "per_seed": ev.seed_max, "curve": ev.curve()}

    def min_gpus(self, name, system, rate, hi=64) -> dict:
        """Fewest GPUs with mean attainment >= target, confirmed by the two counts below failing."""
        memo: dict[int, list[float]] = {}

        def ok(g: int) -> bool:
            if g not in memo:
                memo[g] = self.seeds_at(name, system, g, rate)
            return sum(memo[g]) / len(memo[g]) >= TARGET

        lo, top = 1, 4
        while not ok(top):
            lo, top = top, top * 2
            if top > hi:
                return {"gpus": None, "points": {g: mean_ci(v) for g, v in sorted(memo.items())}}
        while top - lo > 1:
            mid = (lo + top) // 2
            if ok(mid):
                top = mid
            else:
                lo = mid
        for g in (top - 1, top - 2):  # attainment need not grow monotonically with GPUs
            if g >= 1 and ok(g):
                top = g
        passing = sum(1 for a in memo[top] if a >= TARGET)
        return {"gpus": top, "seeds_passing": passing, "seeds": len(memo[top]), "points": {g: mean_ci(v) for g, v in sorted(memo.items())}}


def reference_rate(run: Runner, name: str, rate_results: dict) -> tuple[float, str]:
    """The rate the burst and GPUs-needed experiments start from: what bundle sustains on 16 GPUs,
    or, where it sustains nothing, a quarter of the fluid bound (bundle then scores 0 / none)."""
    found = rate_results.get(name, {}).get("16", {}).get("bundle", {}).get("max_rate")
    if found is None:
        found = max(run.max_rate(name, s, 16)["max_rate"] for s in ("bundle-static", "bundle-auto"))
    if found > 0:
        return found, "bundle's max rate on 16 GPUs"
    return 0.25 * fluid(name, 16, run.args.duration), "a quarter of the 16-GPU fluid bound (bundle sustains no rate)"


def better_bundle(row: dict, key: str) -> dict:
    """``bundle`` = the better of the static and the reactive deployment (by mean)."""
    variant = max(("bundle-static", "bundle-auto"), key=lambda s: row[s][key])
    return {**row[variant], "variant": variant}


def ratio(a, b):
    return a / b if b else math.inf


def bundle_config(run: Runner, name: str, gpus: int, rate: float) -> dict:
    """Each bundle variant's deployment on the seed-1 trace at ``rate`` (where bundle sustains
    no rate: a quarter of the fluid bound): its allocation follows that trace's mix."""
    rate = rate if rate > 0 else 0.25 * fluid(name, gpus, run.args.duration)
    arrivals = trace(name, rate, run.args.duration, 1)
    wl = workload(name)
    return {s: run_trace(arrivals, wl, s, gpus, stop_below=TARGET).config for s in ("bundle-static", "bundle-auto")}


def cmd_rate(run: Runner, names) -> dict:
    out = {}
    systems = run.args.systems or HEADLINE
    for name in names:
        gpus_list = run.args.gpus if name.partition(CACHED)[0] == "paper" else [16]
        out[name] = {}
        for g in gpus_list:
            row = run.across(run.max_rate, name, systems, g)
            row["fluid"] = fluid(name, g, run.args.duration)
            if {"bundle-static", "bundle-auto"} <= set(row):
                row["bundle"] = better_bundle(row, "max_rate")
                row["bundle_config"] = bundle_config(run, name, g, row["bundle"]["max_rate"])
            out[name][str(g)] = row
            shown = [s for s in ("ours", "bundle", "fcfs", "pooled") if s in row]
            print(
                f"[{name}] {g} GPUs: max rate at >= 90%: "
                + ", ".join(f"{s} {row[s]['max_rate']:.2f}" for s in shown)
                + f", fluid {row['fluid']:.2f} req/s",
                flush=True,
            )
    return out


def cmd_burst(run: Runner, names, rate_results) -> dict:
    out = {}
    g = 16
    for name in names:
        ref, why = reference_rate(run, name, rate_results)
        base = 0.5 * ref
        row = run.across(run.max_burst, name, HEADLINE, g, base)
        row["bundle"] = better_bundle(row, "max_multiplier")
        out[name] = {"gpus": g, "base_rate": base, "base_is_half_of": why, "burst_s": BURST_S, **row}
        print(
            f"[{name}] burst at {g} GPUs from {base:.2f} req/s: "
            + ", ".join(f"{s} x{row[s]['max_multiplier']:.1f}" for s in ("ours", "bundle", "fcfs", "pooled")),
            flush=True,
        )
    return out


def cmd_gpus(run: Runner, names, rate_results) -> dict:
    out = {}
    for name in names:
        target, why = reference_rate(run, name, rate_results)
        row = run.across(run.min_gpus, name, ("ours", "fcfs", "bundle-static", "bundle-auto", "pooled"), target)
        static, auto = row["bundle-static"]["gpus"], row["bundle-auto"]["gpus"]
        row["bundle"] = row["bundle-static"] if auto is None or (static is not None and static <= auto) else row["bundle-auto"]
        row["fluid"] = math.ceil(target / fluid(name, 1, run.args.duration))
        out[name] = {"target_rate": target, "target_is": why, **row}
        print(
            f"[{name}] GPUs to sustain {target:.2f} req/s: "
            + ", ".join(f"{s} {row[s]['gpus']}" for s in ("ours", "bundle", "fcfs", "pooled"))
            + f", fluid {row['fluid']}",
            flush=True,
        )
    return out


def cmd_ablations(run: Runner, names, rate_results) -> dict:
    out = {}
    g = 16
    for name in names:
        known = rate_results.get(name, {}).get(str(g), {})
        fresh = run.across(run.max_rate, name, [s for s in ABLATIONS if s not in known], g)
        row = {s: known[s] if s in known else fresh[s] for s in ABLATIONS}
        out[name] = {"gpus": g, **row}
        print(f"[{name}] ablations at {g} GPUs: " + ", ".join(f"{s} {row[s]['max_rate']:.2f}" for s in ABLATIONS), flush=True)
    return out


OVERLOAD = (1.0, 1.25, 1.5)


def cmd_overload(run: Runner, names) -> dict:
    """Offered load at and beyond the fluid bound, 16 GPUs: what admission lets in, and whether
    what it lets in still meets its SLO (without admission everything is let in)."""
    out = {}
    g = 16
    for name in names:
        bound = fluid(name, g, run.args.duration)
        out[name] = {"gpus": g, "fluid": bound, "points": {}}
        for x in OVERLOAD:
            seeds = run.across(run.admitted_at, name, ("ours", "no-admission"), g, x * bound)
            row = {s: {"admitted": mean_ci([a for a, _ in v]), "met_of_admitted": mean_ci([m for _, m in v])} for s, v in seeds.items()}
            out[name]["points"][str(x)] = row
            o = row["ours"]
            print(
                f"[{name}] offered {x:.2f}x fluid: ours admits {o['admitted'][0]:.2f}, {o['met_of_admitted'][0]:.2f} of those meet; "
                f"without admission {row['no-admission']['met_of_admitted'][0]:.2f} meet",
                flush=True,
            )
    return out


def fmt(mean, half=None, digits=2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if not half else f"{mean:.{digits}f} ± {half:.{digits}f}"


def searched(r: dict, key: str, digits: int = 2) -> str:
    """A searched maximum: where the mean over seeds crosses the target, then (where the run has
    them) the mean and 95% interval of each seed's own maximum."""
    if "per_seed" not in r:  # a results file from before the per-seed refinement
        return fmt(r[key], r["per_seed_ci95"], digits)
    return f"{r[key]:.{digits}f} ({fmt(r['per_seed_mean'], r['per_seed_ci95'], digits)})"


def paired(a: dict, b: dict, digits: int = 2) -> str:
    """Mean and 95% interval over seeds of a's maximum minus b's, seed by seed."""
    if "per_seed" not in a or "per_seed" not in b:
        return "-"
    return fmt(*paired_ci(a["per_seed"], b["per_seed"]), digits)


def write_summary() -> None:
    """benchmarks/results/paper.md from every paper_*.json present."""

    def load(name):
        p = RESULTS / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    lines = [
        "# The paper's experiments in simulation",
        "",
        "Generated by `python benchmarks/paper.py all`. Reference H100 cost model: `legodiffusion/sim/data/h100.json` (each number names its source; none is our own GPU measurement yet): batch-1 latencies at 1024², batch curves, token-proportional resolution scaling, activation memory, real tensor sizes (latents, text embeddings, ControlNet residual sets), disk -> host -> device loads with a 2 TB host cache per 8-GPU node, NVLink and network links, and the measured per-dispatch overhead. SLO = 2x a request's solo latency. Rejected requests and requests unfinished at the end of the run count as misses; the first 30 s are warm-up (cold loads) and not scored.",
        "",
        "Each max rate is found on the mean attainment over trace seeds by bisection, then confirmed by the points above it (attainment need not fall monotonically). In parentheses: the mean and 95% interval over seeds of each seed's own largest passing rate (its bracket among the points the search visited, bisected as often again on that seed alone); `ours - fcfs` is the same seed by seed (paired, same traces). References: **fluid** = GPUs / mean profiled GPU-seconds per request; **pooled** = any GPU runs any whole request, no memory limit, no loads (FCFS M/G/c). **bundle** = the better of `bundle-static` and `bundle-auto` at each point (its variant and configuration are listed).",
        "",
    ]
    rate = load("paper_rate")
    if rate:
        d = rate["detail"]
        lines += [f"## Max sustainable rate at >= 90% SLO attainment (paper: {PAPER['rate']})", ""]
        lines += [
            "| workload | GPUs | fluid | pooled | ours | bundle | fcfs | ours - fcfs | ours / bundle | ours / fluid | bundle / fluid | ours / pooled |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, by_g in d.items():
            for g, r in by_g.items():
                if not {"ours", "bundle", "fcfs", "pooled"} <= set(r):  # a run of some systems only (--systems)
                    continue
                o, b, f, p = r["ours"], r["bundle"], r["fcfs"], r["pooled"]
                lines.append(
                    f"| {name} | {g} | {r['fluid']:.2f} | {searched(p, 'max_rate')} | {searched(o, 'max_rate')} | "
                    f"{searched(b, 'max_rate')} {b['variant'].split('-')[1]} | {searched(f, 'max_rate')} | {paired(o, f)} | "
                    f"**{ratio(o['max_rate'], b['max_rate']):.2f}x** | {ratio(o['max_rate'], r['fluid']):.2f} | {ratio(b['max_rate'], r['fluid']):.2f} | {ratio(o['max_rate'], p['max_rate']):.2f} |"
                )
        lines += [
            "",
            "Bundle configurations (on the seed-1 trace at bundle's max rate; re-allocations counted until the run ended or could no longer meet 90%):",
            "",
        ]
        for name, by_g in d.items():
            for g, r in by_g.items():
                for text in r.get("bundle_config", {}).values():
                    lines.append(f"- {name}, {g} GPUs, {text}")
        lines += ["", _stamp_line(rate), ""]
    burst = load("paper_burst")
    if burst:
        d = burst["detail"]
        lines += [f"## Burst tolerance (paper: {PAPER['burst']})", ""]
        lines += [
            "16 GPUs from a base rate of half what bundle sustains without a burst (where it sustains none: half of a quarter of the fluid bound); a 30 s burst a third of the way in (on `drifting`, its one-workflow bursts take the multiple). Largest multiplier kept at >= 90% (0: not even the base rate):",
            "",
            "| workload | base req/s | pooled | ours | bundle | fcfs | ours - fcfs | ours / bundle |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in d.items():
            lines.append(
                f"| {name} | {r['base_rate']:.2f} | {searched(r['pooled'], 'max_multiplier', 1)} | {searched(r['ours'], 'max_multiplier', 1)} | "
                f"{searched(r['bundle'], 'max_multiplier', 1)} {r['bundle']['variant'].split('-')[1]} | {searched(r['fcfs'], 'max_multiplier', 1)} | {paired(r['ours'], r['fcfs'], 1)} | "
                f"**{ratio(r['ours']['max_multiplier'], r['bundle']['max_multiplier']):.2f}x** |"
            )
        lines += ["", _stamp_line(burst), ""]
    gpus = load("paper_gpus")
    if gpus:
        d = gpus["detail"]
        lines += [
            f"## GPUs needed (paper: {PAPER['gpus']})",
            "",
            "To sustain what bundle sustains on 16 GPUs (where it sustains none: a quarter of the 16-GPU fluid bound), at >= 90%: the fewest GPUs whose mean attainment over seeds passes, confirmed by the two counts below (`None`: not with 64); in parentheses, how many seeds pass on their own at that count:",
            "",
        ]
        lines += ["| workload | req/s | fluid | pooled | ours | bundle | fcfs | bundle / ours |", "|---|---|---|---|---|---|---|---|"]
        for name, r in d.items():
            o, b = r["ours"]["gpus"], r["bundle"]["gpus"]

            def cell(x):
                return f"{x['gpus']} ({x['seeds_passing']}/{x['seeds']})" if x.get("seeds") else str(x["gpus"])

            ratio_cell = f"**{ratio(b, o):.2f}x**" if o and b else "-"
            lines.append(
                f"| {name} | {r['target_rate']:.2f} | {r['fluid']} | {cell(r['pooled'])} | {cell(r['ours'])} | {cell(r['bundle'])} | {cell(r['fcfs'])} | {ratio_cell} |"
            )
        lines += ["", _stamp_line(gpus), ""]
    over = load("paper_overload")
    if over:
        d = over["detail"]
        lines += [
            "## Overload: does admission keep its promises?",
            "",
            "16 GPUs, offered load at and beyond the fluid bound (Poisson, the workload's mix). `admitted`: share of scored requests admitted; `met`: share of the admitted that met their SLO (without admission every request is admitted):",
            "",
            "| workload | offered / fluid | ours admitted | ours met | no-admission met |",
            "|---|---|---|---|---|",
        ]
        for name, r in d.items():
            for x, row in r["points"].items():
                o, n = row["ours"], row["no-admission"]
                lines.append(
                    f"| {name} | {float(x):.2f} | {fmt(*o['admitted'])} | {fmt(*o['met_of_admitted'])} | {fmt(*n['met_of_admitted'])} |"
                )
        lines += ["", _stamp_line(over), ""]
    for path in sorted(RESULTS.glob("paper_ablations*.json")):  # one table per run, each with its stamp
        lines += _ablation_rows(json.loads(path.read_text()))
    for path in sorted(RESULTS.glob("paper_rate*_cached.json")):
        lines += _cached_rows(json.loads(path.read_text()), rate, path.name, *WITH_CACHING)
    for path in sorted(RESULTS.glob("paper_rate*_stepcache.json")):
        lines += _cached_rows(json.loads(path.read_text()), rate, path.name, *WITH_STEP_CACHING)
    lines += _other_seeds_rows(sorted(RESULTS.glob("paper_rate*_seeds*.json")))
    lines += ["## Workloads", ""] + [f"- **{k}**: {v}" for k, v in DESCRIBE.items()] + [""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "paper.md").write_text("\n".join(lines) + "\n")


def _ablation_rows(abl: dict) -> list[str]:
    """The ablation table of one results file (a run may cover some of the workloads)."""
    lines: list[str] = []
    d = abl["detail"]
    names = list(d)
    lines += ["## Ablations (16 GPUs, max sustainable rate in req/s; each removes one mechanism)", ""]
    lines += ["| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in ABLATIONS:
        cells = []
        for name in names:
            r = d[name].get(s)
            if r is None:  # not in this results file
                cells.append("-")
                continue
            rel = ratio(r["max_rate"], d[name]["ours"]["max_rate"])
            cells.append(f"{searched(r, 'max_rate')} [{rel:.2f}]")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets: relative to ours. `fcfs`: arrival order, no admission; `latest-start`: ordered by the latest start (deadline - whole profiled work) fixed at arrival, instead of least laxity (deadline - remaining work, re-evaluated as requests progress); `no-admission`: ours without SLO admission; `profile-admission`: admission drains the work ahead at the profile's batch-1 rate, without the measured drain rate or the late-finish margin; `no-prefetch`: no replicas loaded ahead of demand; `no-eviction-cost`: placement ignores what a load evicts and loads rather than wait for a busy holder; `no-urgent-keep`: a request with under 0.5 s of slack does not keep its worker free of later requests' calls; `no-batch-sizing`: batches as large as the limit whether or not they save time per item; `no-adaptive-parallelism`: always throughput-mode batches (guidance branches never spread); `no-cross-request-batching`: batches only within a request; `no-sharing`: every workflow its own model copies, on a demand-proportional split of the GPUs (the same allocator as bundle); `static-partitions`: models shared, each pinned to a fixed demand-proportional split of the GPUs (no per-model scaling).",
        "",
        _stamp_line(abl),
        "",
    ]
    return lines


#: (heading, description) of the "with caching" tables
WITH_CACHING = (
    "With approximate caching (NIRVANA)",
    "Every request opts in to the approximate cache; the simulator draws each lookup's answer from the cache model named after the workload (`nirvana`: a 70% hit rate with K spread over 5-25 of 50 steps, matched to NIRVANA's reported 21% average saving; `benchmark`: benchmarks/less_work.py's figures), and the serving code passes the skipped iterations through. SLOs stay those of the whole schedule; the fluid bound in paper_rate.json is that of the uncached work.",
)
WITH_STEP_CACHING = (
    "With step caching (First Block Cache)",
    "Every request on a model with a skip share opts in to step caching; the simulator draws which samples of each denoiser call skip all but the first block (`fbcache`, per base model, legodiffusion/sim/step_skip.py: FLUX.1-dev the share that gives First Block Cache's reported 2x at threshold 0.08; SD3.5-large and SD3-medium the same share assumed, their first block 1/38 and 1/24 of a call; the 4-step schnell and turbo models none). The coordinator's estimates stay those of full calls. SLOs stay those of the uncached requests; the fluid bound in paper_rate.json is that of the uncached work.",
)


def _cached_rows(cached: dict | None, rate: dict | None, source: str, heading: str, description: str) -> list[str]:
    """A "with caching" table: each system's max rate when every request opts in (to the
    approximate cache, or to step caching), beside its rate without."""
    if not cached:
        return []

    # the rates without caching, where they were searched with the same seeds and traces
    def traces(result: dict) -> tuple:  # files from before --first-seed ran from seed 1
        return result.get("seeds"), result.get("first_seed", 1), result.get("duration_s")

    same = rate and traces(rate) == traces(cached)
    plain = rate["detail"] if same else {}
    lines = [
        f"## {heading} (`{source}`)",
        "",
        description
        + " Max sustainable rate at >= 90% (req/s), with the same system's rate without caching where paper_rate.json has it for the same seeds and trace length:",
        "",
        "| workload | GPUs | system | with caching | without | gain |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_g in cached["detail"].items():
        base = name.partition(CACHED)[0]
        for g, r in by_g.items():
            for s in ("ours", "bundle", "fcfs", "pooled"):
                if s not in r:
                    continue
                without = plain.get(base, {}).get(g, {}).get(s, {}).get("max_rate")
                gain = f"**{ratio(r[s]['max_rate'], without):.2f}x**" if without else "-"
                lines.append(f"| {name} | {g} | {s} | {searched(r[s], 'max_rate')} | {fmt(without)} | {gain} |")
    return lines + ["", _stamp_line(cached), ""]


def _other_seeds_rows(paths: list[Path]) -> list[str]:
    """Max-rate runs on other trace seeds (``--first-seed``): a replication beside the main table."""
    if not paths:
        return []
    lines = [
        "## On other trace seeds",
        "",
        "The same search on trace seeds the main tables do not use (`--first-seed`); crossing, then each seed's own maximum (mean ± 95% interval):",
        "",
        "| results | workload | GPUs | seeds | ours | fcfs | ours - fcfs |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        result = json.loads(path.read_text())
        first = result.get("first_seed", 1)
        seeds = f"{first}-{first + result['seeds'] - 1}"
        for name, by_g in result["detail"].items():
            for g, r in by_g.items():
                if {"ours", "fcfs"} <= set(r):
                    o, f = r["ours"], r["fcfs"]
                    lines.append(
                        f"| `{path.name}` | {name} | {g} | {seeds} | {searched(o, 'max_rate')} | {searched(f, 'max_rate')} | {paired(o, f)} |"
                    )
        lines += ["", _stamp_line(result), ""]
    return lines


def _stamp_line(result: dict) -> str:
    s = result.get("stamp", {})
    return f"Commit `{s.get('commit', '?')[:12]}`, inputs `{s.get('inputs_sha256', '?')}`, {result.get('seeds', '?')} seeds, {result.get('duration_s', '?'):g} s traces; `{s.get('command', '')}` took {s.get('wall_s', 0):.0f} s."


def _plot_rate(detail):
    def plot(path):
        import matplotlib.pyplot as plt

        panels = [(name, g, r) for name, by_g in detail.items() for g, r in by_g.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3), squeeze=False)
        for ax, (name, g, r) in zip(axes[0], panels):
            for s in (s for s in ("ours", "bundle-static", "bundle-auto", "fcfs", "pooled") if s in r):
                c = r[s]["curve"]
                ax.errorbar([p[0] for p in c], [p[1] for p in c], yerr=[p[2] for p in c], marker="o", ms=3, label=s, capsize=2)
            ax.axvline(r["fluid"], ls=":", color="black", label="fluid bound")
            ax.axhline(TARGET, ls="--", color="grey")
            ax.set_title(f"{name}, {g} GPUs", fontsize=9)
            ax.set_xlabel("requests / s")
            ax.set_ylim(0, 1.02)
        axes[0][0].set_ylabel("SLO attainment")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    return plot


def _plot_bars(detail, key, label):
    def plot(path):
        import matplotlib.pyplot as plt

        names = list(detail)
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            r = detail[name]
            systems = [s for s in ("ours", "bundle", "fcfs", "pooled") if s in r]
            vals = [r[s][key] or 0 for s in systems]
            errs = [r[s].get("per_seed_ci95", 0) for s in systems]
            ax.bar(systems, vals, yerr=errs, capsize=3)
            ax.set_title(name, fontsize=9)
            ax.set_ylabel(label)
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    return plot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=["rate", "burst", "gpus", "ablations", "overload", "all"])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=(*WORKLOADS, "editing"))
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32], help="rate on the paper workload (others: 16)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--first-seed", type=int, default=1, help="trace seeds first-seed .. first-seed + seeds - 1 (results *_seedsA-B unless 1)"
    )
    ap.add_argument("--duration", type=float, default=240.0, help="simulated seconds per trace")
    ap.add_argument("--iterations", type=int, default=4, help="bisection steps per search")
    ap.add_argument("--jobs", type=int, default=2, help="processes running seeds side by side")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 120 s traces, 3 bisection steps")
    ap.add_argument("--systems", nargs="+", choices=HEADLINE, help="rate: only these systems (default all headline ones)")
    ap.add_argument(
        "--approx-cache",
        choices=("off", *CACHE_MODELS),
        default="off",
        help="every request opts in to the approximate cache (results *_cached)",
    )
    ap.add_argument(
        "--step-cache",
        choices=("off", *STEP_CACHE_MODELS),
        default="off",
        help="every request of a transformer family opts in to step caching (results *_stepcache)",
    )
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.duration, args.iterations = 2, 120.0, 3
    started = time.time()
    run = Runner(args)
    todo = ["rate", "burst", "gpus", "ablations", "overload"] if args.experiment == "all" else [args.experiment]
    suffix = ("" if args.workloads == list(WORKLOADS) else "_" + "-".join(args.workloads)) + (
        "" if args.approx_cache == "off" else "_cached"
    )
    suffix += "" if args.step_cache == "off" else "_stepcache"
    suffix += "" if args.first_seed == 1 else f"_seeds{args.first_seed}-{args.first_seed + args.seeds - 1}"
    tokens = [m for m in (args.approx_cache, args.step_cache) if m != "off"]
    if tokens:
        args.workloads = [f"{n}{CACHED}{'+'.join(tokens)}" for n in args.workloads]
    prior = RESULTS / f"paper_rate{suffix}.json"
    rate_results = json.loads(prior.read_text())["detail"] if prior.exists() and "rate" not in todo else {}
    for exp in todo:
        t0 = time.time()
        if exp == "rate":
            detail = rate_results = cmd_rate(run, args.workloads)
            summary = {  # ours / bundle, or ours' rate where bundle was not run (--systems)
                f"{n}/{g}": round(ratio(r["ours"]["max_rate"], r["bundle"]["max_rate"]) if "bundle" in r else r["ours"]["max_rate"], 2)
                for n, by in detail.items()
                for g, r in by.items()
            }
            plot = _plot_rate(detail)
        elif exp == "burst":
            detail = cmd_burst(run, args.workloads, rate_results)
            summary = {n: round(ratio(r["ours"]["max_multiplier"], r["bundle"]["max_multiplier"]), 2) for n, r in detail.items()}
            plot = _plot_bars(detail, "max_multiplier", "burst multiplier at >= 90%")
        elif exp == "gpus":
            detail = cmd_gpus(run, args.workloads, rate_results)
            summary = {n: r["ours"]["gpus"] for n, r in detail.items()}
            plot = None
        elif exp == "overload":
            detail = cmd_overload(run, args.workloads)
            summary = {n: {x: round(p["ours"]["met_of_admitted"][0], 3) for x, p in r["points"].items()} for n, r in detail.items()}
            plot = None
        else:
            detail = cmd_ablations(run, args.workloads, rate_results)
            summary = {n: {s: round(r[s]["max_rate"], 2) for s in ABLATIONS} for n, r in detail.items()}
            plot = None
        report(
            f"paper_{exp}{suffix}",
            {
                "summary": summary,
                "seeds": args.seeds,
                "first_seed": args.first_seed,
                "duration_s": args.duration,
                "stamp": stamp(DATA_FILES, t0),
                "detail": detail,
            },
            None if plot is None else plot,
        )
        write_summary()
    print(f"paper.py {args.experiment}: {time.time() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
