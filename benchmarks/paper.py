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
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, report, stamp  # noqa: E402
from benchmarks.paper_report import plot_bars, plot_rate, ratio, write_summary  # noqa: E402
from benchmarks.paper_workloads import (  # noqa: E402
    ABLATIONS,
    BURST_S,
    CACHED,
    DATA_FILES,
    HEADLINE,
    WORKLOADS,
    fluid,
    trace,
    warmup,
    workload,
)
from legodiffusion.sim.approx import MODELS as CACHE_MODELS  # noqa: E402
from legodiffusion.sim.experiment import TARGET, Evaluator, run_trace, search_max  # noqa: E402
from legodiffusion.sim.step_skip import MODELS as STEP_CACHE_MODELS  # noqa: E402
from legodiffusion.stats import mean_ci  # noqa: E402


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
            plot = plot_rate(detail)
        elif exp == "burst":
            detail = cmd_burst(run, args.workloads, rate_results)
            summary = {n: round(ratio(r["ours"]["max_multiplier"], r["bundle"]["max_multiplier"]), 2) for n, r in detail.items()}
            plot = plot_bars(detail, "max_multiplier", "burst multiplier at >= 90%")
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
