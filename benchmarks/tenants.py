"""Tenants on the simulated reference cluster (H100s, the paper workload), several seeds:

(a) **priority under a flood**: a high-priority tenant ``web`` sends the paper mix at
``--web-load`` x the cluster's capacity; a low-priority tenant ``batch`` sends it at
``--batch-share`` x capacity ("its share"), then at 10x that (the flood). Both have deadlines
(the workload's SLO: 2x solo latency), so admission sheds what cannot finish in time. Reported:
web's SLO attainment (met / arrived, rejections count as misses) without and with the flood,
under three configurations side by side: ``classes`` (web high, batch low), ``tenants`` (both
in one class, fair sharing only) and ``none`` (one tenant: the scheduler before tenants).

(b) **equal shares for unequal requests**: two tenants of equal weight send FLUX.1-dev, one at 4
steps (``--small-load`` x capacity of work), one at 50 (``--large-load`` x capacity), without
deadlines: both more than half the cluster, so both stay backlogged. Reported: the simulated
GPU-seconds each received between the warm-up and the end of arrivals (a dispatch's time split
over its items), as the ratio small / large; ``none`` (one tenant: first come, first served)
beside it.

While a higher class has requests running, a lower class leaves each worker a free slot, sends
batches of the latency size and evicts nothing (:meth:`MicroServingPolicy.plan`).

    python benchmarks/tenants.py                      # 5 seeds
    python benchmarks/tenants.py --seeds 2 --duration 120   # a smoke run

Capacity is the fluid estimate: GPUs / the mix's mean profiled solo work per request (batching
makes the real capacity somewhat higher). Intervals are 95% (Student t) over the seeds.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report, stamp  # noqa: E402
from legodiffusion.core.coordinator import Coordinator  # noqa: E402
from legodiffusion.core.fairness import PRIORITY_CLASSES  # noqa: E402
from legodiffusion.sim.cluster import Simulator  # noqa: E402
from legodiffusion.sim.experiment import deploy, drain_window, make_system  # noqa: E402
from legodiffusion.sim.reference import ReferenceCost  # noqa: E402
from legodiffusion.sim.workload import Workload, paper_workflows  # noqa: E402
from legodiffusion.stats import mean_ci  # noqa: E402

CONFIGS = ("classes", "tenants", "none")
HIGH, NORMAL, LOW = PRIORITY_CLASSES["high"], PRIORITY_CLASSES["normal"], PRIORITY_CLASSES["low"]


def capacity_rps(workload: Workload, gpus: int, mix: dict[str, float] | None = None) -> float:
    return gpus / sum(workload.demand(mix).values())


def poisson(rng: random.Random, rate: float, duration: float, mix: dict[str, float]) -> list[tuple[float, str]]:
    names, weights = list(mix), list(mix.values())
    out, t = [], rng.expovariate(rate)
    while t < duration:
        out.append((t, rng.choices(names, weights)[0]))
        t += rng.expovariate(rate)
    return out


def simulate(workload: Workload, gpus: int, sends: list[dict], until_s: float) -> tuple[Simulator, list[tuple[dict, object]]]:
    """Submit every request of ``sends`` (each: t, workflow, tenant, priority, optional extra
    inputs, deadline True/False) and run until ``until_s``; returns the simulator and each send
    with its request."""
    policy = make_system("ours", workload, gpus)
    coord = Coordinator(gpus, policy, cost=workload.cost)
    sim = Simulator(coord, workload.cost, budget_bytes=getattr(workload.cost, "memory_bytes", None))
    deploy(sim, policy, workload, workload.mix)
    ids = itertools.count(1)
    out = []
    for s in sorted(sends, key=lambda s: s["t"]):
        req = workload.request(next(ids), s["workflow"], s["t"], s.get("extra"), s["tenant"], s["priority"])
        if not s.get("deadline", True):
            req.deadline_s = None
        out.append((s, req))
        sim.submit_at(s["t"], req)
    sim.run(until_s=until_s)
    return sim, out


def _who(config: str, tenant: str, klass: int) -> tuple[str, int]:
    """The tenant and class a request carries under ``config``."""
    if config == "none":
        return "default", NORMAL
    if config == "tenants":
        return tenant, NORMAL
    return tenant, klass


def flood_run(workload: Workload, gpus: int, seed: int, config: str, batch_load: float, args) -> float:
    """web's SLO attainment with batch sending at ``batch_load`` x capacity."""
    cap = capacity_rps(workload, gpus)
    sends = []
    for i, (tenant, klass, load) in enumerate((("web", HIGH, args.web_load), ("batch", LOW, batch_load))):
        name, rank = _who(config, tenant, klass)
        rng = random.Random(seed * 1000 + i)  # web's arrivals are the same with and without the flood
        for t, wf in poisson(rng, load * cap, args.duration, workload.mix):
            sends.append({"t": t, "workflow": wf, "tenant": name, "priority": rank, "who": tenant})
    sim, sent = simulate(workload, gpus, sends, args.duration + drain_window(workload))
    web = [req for s, req in sent if s["who"] == "web" and req.arrival_s >= args.warmup]
    met = sum(
        1
        for req in web
        if req.id in sim.outcomes and sim.outcomes[req.id].status == "succeeded" and sim.finish_s[req.id] <= req.deadline_s + 1e-9
    )
    return met / max(1, len(web))


def sizes_run(workload: Workload, gpus: int, seed: int, config: str, args) -> dict[str, float]:
    """Simulated GPU-seconds the 4-step and the 50-step sender received from the warm-up to the
    end of arrivals (both backlogged)."""
    sends = []
    for i, (tenant, steps, load) in enumerate((("small", 4, args.small_load), ("large", 50, args.large_load))):
        name, rank = _who(config, tenant, NORMAL)
        extra = {"steps": steps}
        rate = load * gpus / workload.solo_of(workload.request(0, "flux-dev", 0.0, extra))
        rng = random.Random(seed * 1000 + i)
        for t, _ in poisson(rng, rate, args.duration, {"flux-dev": 1.0}):
            sends.append(
                {"t": t, "workflow": "flux-dev", "tenant": name, "priority": rank, "extra": extra, "deadline": False, "who": tenant}
            )
    sim, sent = simulate(workload, gpus, sends, args.warmup)

    def busy() -> dict[str, float]:
        out = {"small": 0.0, "large": 0.0}
        for s, req in sent:
            out[s["who"]] += sim.busy_s_by_request.get(req.id, 0.0)
        return out

    start = busy()
    sim.run(until_s=args.duration)
    end = busy()
    return {k: end[k] - start[k] for k in end}


def _ci(values: list[float], digits: int = 4) -> dict:
    m, h = mean_ci(values)
    return {"mean": round(m, digits), "ci95": round(h, digits), "runs": [round(v, digits) for v in values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of arrivals (simulated)")
    ap.add_argument("--warmup", type=float, default=60.0, help="arrivals before this are not scored")
    ap.add_argument("--web-load", type=float, default=0.5, help="(a) web's load, x capacity")
    ap.add_argument("--batch-share", type=float, default=0.2, help="(a) batch's share, x capacity; the flood is 10x it")
    ap.add_argument("--small-load", type=float, default=0.75, help="(b) the 4-step sender's load, x capacity")
    ap.add_argument("--large-load", type=float, default=2.0, help="(b) the 50-step sender's load, x capacity")
    args = ap.parse_args()
    started = time.time()
    workload = Workload(paper_workflows(), ReferenceCost())
    seeds = range(args.seeds)

    flood: dict = {}
    for config in CONFIGS:
        share = [flood_run(workload, args.gpus, s, config, args.batch_share, args) for s in seeds]
        flooded = [flood_run(workload, args.gpus, s, config, 10 * args.batch_share, args) for s in seeds]
        drop = [100 * (a - b) for a, b in zip(share, flooded)]
        flood[config] = {"web_attainment_at_share": _ci(share), "web_attainment_flooded": _ci(flooded), "drop_points": _ci(drop, 2)}
        print(config, "flood", flood[config]["drop_points"], file=sys.stderr)

    sizes: dict = {}
    for config in ("tenants", "none"):
        runs = [sizes_run(workload, args.gpus, s, config, args) for s in seeds]
        ratio = [r["small"] / r["large"] for r in runs]
        sizes[config] = {
            "gpu_s_small": _ci([r["small"] for r in runs], 1),
            "gpu_s_large": _ci([r["large"] for r in runs], 1),
            "ratio_small_over_large": _ci(ratio),
        }
        print(config, "sizes", sizes[config]["ratio_small_over_large"], file=sys.stderr)

    drop = flood["classes"]["drop_points"]
    ratio = sizes["tenants"]["ratio_small_over_large"]
    figures = {
        "flood_drop_points_classes": drop["mean"],
        "flood_drop_points_ci95": drop["ci95"],
        "flood_drop_points_tenants_only": flood["tenants"]["drop_points"]["mean"],
        "flood_drop_points_no_tenants": flood["none"]["drop_points"]["mean"],
        "flood_within_2_points": abs(drop["mean"]) + drop["ci95"] <= 2.0,
        "gpu_s_ratio_small_over_large": ratio["mean"],
        "gpu_s_ratio_ci95": ratio["ci95"],
        "gpu_s_ratio_no_tenants": sizes["none"]["ratio_small_over_large"]["mean"],
        "gpu_s_within_10_percent": abs(ratio["mean"] - 1.0) + ratio["ci95"] <= 0.10,
        "config": {
            "gpus": args.gpus,
            "seeds": args.seeds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "web_load": args.web_load,
            "batch_share": args.batch_share,
            "small_load": args.small_load,
            "large_load": args.large_load,
            "capacity_rps": round(capacity_rps(workload, args.gpus), 4),
            "policy": "default (latest start, admission)",
            "cost": "ReferenceCost(h100), paper workload",
        },
        "detail": {"flood": flood, "sizes": sizes},
        "stamp": stamp([], started),
    }
    report("tenants", figures)


if __name__ == "__main__":
    main()
