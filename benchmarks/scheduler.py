"""Coordinator + policy decision rate: 256 simulated workers, 100, 1,000 and 10,000 in-flight
requests of a 50-step guided workflow (154 nodes each), no models, measured in one run. Closed
loop: each finished request is replaced at once, so the count in flight stays put. The cost per
decision should not grow with the requests in flight. The garbage collector runs at the pace the
server sets (``runtime/collector.py``); the headline point is measured again at the interpreter's
default pace, beside it.

    python benchmarks/scheduler.py [--workers 256] [--inflight 100 1000 10000] [--steps 50] [--dispatches 300000] [--segments 3] [--policy default]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report, stamp  # noqa: E402
from legodiffusion.core.coordinator import Coordinator, Request  # noqa: E402
from legodiffusion.core.cost import DefaultCost  # noqa: E402
from legodiffusion.core.policy import make_policy  # noqa: E402
from legodiffusion.ops import default_registry  # noqa: E402
from legodiffusion.runtime.collector import pace_for_control_plane  # noqa: E402
from legodiffusion.sim.cluster import Simulator  # noqa: E402
from legodiffusion.workflow.catalog import sd_txt2img  # noqa: E402
from legodiffusion.workflow.expand import Expander, bind_inputs  # noqa: E402


def build(workers: int, inflight: int, steps: int, policy: str):
    cost = DefaultCost(heavy_s=0.1, light_s=0.001)
    coord = Coordinator(workers, make_policy(policy), cost=cost)
    sim = Simulator(coord, cost)
    ex = Expander(sd_txt2img("sd15"), default_registry())
    ids = itertools.count(1)

    def new_request(t: float) -> None:
        inputs = bind_inputs(ex.spec, {"prompt": "x", "steps": steps, "height": 512, "width": 512})
        sim.submit_at(t, Request(next(ids), ex.template(inputs), inputs, "sd", t))

    sim.on_finish = lambda outcome, t: new_request(t)
    for _ in range(inflight):
        new_request(0.0)
    return sim, ex


class CollectorClock:
    """Seconds the garbage collector ran, and its longest pass, while installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.total_s, self.longest_s, self._t0 = 0.0, 0.0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            took = time.perf_counter() - self._t0
            self.total_s += took
            self.longest_s = max(self.longest_s, took)


def measure(args) -> dict:
    gc.collect()  # the last point's simulator (a coordinator is a reference cycle) goes now, not while timing
    sim, ex = build(args.workers, args.inflight, args.steps, args.policy)
    sim.run(max_events=args.inflight)  # arrivals: every request is in flight
    collector = CollectorClock()
    gc.callbacks.append(collector)
    # consecutive timed segments of one run; their median is the figure (this machine is shared:
    # a segment another process slowed says little about the code)
    rates, walls, nodes, disp = [], [], 0, 0
    for _ in range(args.segments):
        start_nodes, start_disp = sim.dispatched_nodes, sim.dispatches
        t0 = time.perf_counter()
        while sim.dispatched_nodes - start_nodes < args.dispatches // args.segments:
            sim.run(max_events=1000)
        walls.append(time.perf_counter() - t0)
        rates.append((sim.dispatched_nodes - start_nodes) / walls[-1])
        nodes += sim.dispatched_nodes - start_nodes
        disp += sim.dispatches - start_disp
    gc.callbacks.remove(collector)
    busy = sum(w.busy_s for w in sim.workers)
    wall = sum(walls)
    return {
        "nodes_per_s": statistics.median(rates),
        "segments_nodes_per_s": rates,
        "dispatches_per_s": statistics.median(rates) * disp / nodes,  # the median node rate over the mean batch
        "mean_batch": nodes / disp,
        "wall_s": wall,
        "gc_share": collector.total_s / wall,
        "gc_longest_s": collector.longest_s,
        "virtual_s": sim.now,
        "utilisation": min(1.0, busy / (len(sim.workers) * sim.now)) if sim.now else 0.0,
        "inflight": len(sim.coord.requests),
        "nodes_per_request": len(ex.template(bind_inputs(ex.spec, {"prompt": "x", "steps": args.steps})).nodes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--inflight", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dispatches", type=int, default=300_000, help="node dispatches to time at each point")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--segments", type=int, default=3, help="timed segments per point (the figure is their median)")
    args = ap.parse_args()
    if args.segments < 1 or args.dispatches < args.segments:
        ap.error("--segments must be at least 1 and at most --dispatches")
    started = time.time()
    default_pace = pace_for_control_plane()
    by_inflight = {}
    for n in args.inflight:
        res = measure(argparse.Namespace(**{**vars(args), "inflight": n}))
        by_inflight[n] = res
        print(
            f"{n:>6} in flight: {res['nodes_per_s']:,.0f} node dispatches/s ({res['dispatches_per_s']:,.0f} batches/s, mean batch {res['mean_batch']:.2f}), "
            f"{1e6 / res['dispatches_per_s']:.1f} us per batch decision; simulated utilisation {res['utilisation']:.0%}; "
            f"segments {' / '.join(f'{r / 1000:.1f}k' for r in res['segments_nodes_per_s'])}; "
            f"collector {res['gc_share']:.1%} of the time, longest pass {res['gc_longest_s'] * 1e3:.0f} ms",
            flush=True,
        )
    headline = 1000 if 1000 in by_inflight else args.inflight[0]
    paced = gc.get_threshold()
    gc.set_threshold(*default_pace)
    unpaced = measure(argparse.Namespace(**{**vars(args), "inflight": headline}))
    gc.set_threshold(*paced)
    print(
        f"{headline:>6} in flight at the interpreter's default collector pace {default_pace}: "
        f"{unpaced['nodes_per_s']:,.0f} node dispatches/s ({unpaced['nodes_per_s'] / by_inflight[headline]['nodes_per_s']:.2f}x the paced figure); "
        f"collector {unpaced['gc_share']:.1%} of the time, longest pass {unpaced['gc_longest_s'] * 1e3:.0f} ms",
        flush=True,
    )
    prof = cProfile.Profile()
    small = argparse.Namespace(**{**vars(args), "inflight": headline, "dispatches": max(20_000, args.dispatches // 10)})
    prof.enable()
    measure(small)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    stats.print_stats(12)
    top = []
    for (file, line, fn), (_, nc, tt, _, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]:
        top.append({"function": f"{Path(file).name}:{line}({fn})", "tottime_share": round(tt / stats.total_tt, 3), "calls": nc})
    print(f"where the time goes at {headline} in flight (tottime share, cProfile):")
    for t in top[:8]:
        print(f"  {t['tottime_share']:6.1%}  {t['function']}  ({t['calls']} calls)")
    res = by_inflight[headline]
    figures = {
        "workers": args.workers,
        "inflight": headline,
        "steps": args.steps,
        "policy": args.policy,
        "node_dispatches_per_s": round(res["nodes_per_s"]),
        "batch_dispatches_per_s": round(res["dispatches_per_s"]),
        "mean_batch": round(res["mean_batch"], 2),
        "simulated_utilisation": round(res["utilisation"], 3),
        "gc_thresholds": list(paced),
        "default_gc_node_dispatches_per_s": round(unpaced["nodes_per_s"]),
        "default_gc_segments": [round(x) for x in unpaced["segments_nodes_per_s"]],
        "gc_share": round(res["gc_share"], 4),
        "gc_longest_ms": round(res["gc_longest_s"] * 1e3, 1),
        "default_gc_share": round(unpaced["gc_share"], 4),
        "default_gc_longest_ms": round(unpaced["gc_longest_s"] * 1e3, 1),
        "by_inflight": {
            str(n): {
                "node_dispatches_per_s": round(r["nodes_per_s"]),
                "segments_node_dispatches_per_s": [round(x) for x in r["segments_nodes_per_s"]],
                "us_per_batch_decision": round(1e6 / r["dispatches_per_s"], 1),
                "mean_batch": round(r["mean_batch"], 2),
                "simulated_utilisation": round(r["utilisation"], 3),
            }
            for n, r in by_inflight.items()
        },
        "stamp": stamp([], started),
    }

    def plot(path):
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
        ns = list(by_inflight)
        ax1.plot(ns, [by_inflight[n]["nodes_per_s"] for n in ns], marker="o")
        ax1.set_xscale("log")
        ax1.set_xlabel("requests in flight")
        ax1.set_ylabel("node dispatches / s")
        ax1.set_ylim(bottom=0)
        ax2.barh([t["function"][:50] for t in top[:8]][::-1], [t["tottime_share"] for t in top[:8]][::-1])
        ax2.set_xlabel(f"share of coordinator time ({headline} in flight)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    report("scheduler", {**figures, "profile_top": top[:8]}, plot)


if __name__ == "__main__":
    main()
