"""SLO attainment at fixed offered loads, systems side by side on the same traces: finer than the
max-rate search (whose grid hides differences of a few percent), so ablations show there.

    python benchmarks/fixed_rate.py                      # ours, fcfs and the scheduler ablations
    python benchmarks/fixed_rate.py --systems ours fcfs  # any systems of legodiffusion.sim.experiment

Each point is a workload, a GPU count and an offered rate as a fraction of the fluid bound; each
system runs the same 5 trace seeds there (full runs, no early stop). Mean and 95% interval over
seeds, and each system's mean paired difference from ``ours`` on the same seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import report, stamp  # noqa: E402
from benchmarks.paper_workloads import ABLATIONS, DATA_FILES, fluid, trace, warmup, workload  # noqa: E402
from legodiffusion.sim.experiment import run_trace  # noqa: E402
from legodiffusion.stats import mean_ci, paired_ci  # noqa: E402

POINTS = (("paper", 8, 0.75), ("paper", 16, 0.85), ("paper", 32, 0.9), ("many", 16, 0.85), ("drifting", 16, 0.6), ("csv", 16, 0.6))
#: the scheduler's mechanisms from paper.py's ablations, in its order; the structural ones (no
#: sharing, static partitions, no cross-request batching) are measured by max rate there
SYSTEMS = tuple(s for s in ABLATIONS if s not in ("no-cross-request-batching", "no-sharing", "static-partitions"))


def attainment(job: tuple) -> float:
    name, system, gpus, frac, duration, seed = job
    rate = frac * fluid(name, gpus, duration)
    return run_trace(trace(name, rate, duration, seed), workload(name), system, gpus, warmup_s=warmup(duration)).attainment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=240.0)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    seeds = range(1, args.seeds + 1)
    detail = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, gpus, frac in POINTS:
            key = f"{name}/{gpus}@{frac}"
            runs = {s: list(pool.map(attainment, [(name, s, gpus, frac, args.duration, sd) for sd in seeds])) for s in args.systems}
            base = runs.get("ours")
            detail[key] = {
                s: {
                    "mean_ci95": mean_ci(v),
                    "per_seed": v,
                    **({"paired_minus_ours_ci95": paired_ci(v, base)} if base and s != "ours" else {}),
                }
                for s, v in runs.items()
            }
            print(key, " ".join(f"{s} {d['mean_ci95'][0]:.3f}" for s, d in detail[key].items()), flush=True)
    summary = {k: {s: round(d["mean_ci95"][0], 3) for s, d in row.items()} for k, row in detail.items()}
    report(
        "fixed_rate",
        {"summary": summary, "seeds": args.seeds, "duration_s": args.duration, "stamp": stamp(DATA_FILES, t0), "detail": detail},
    )


if __name__ == "__main__":
    main()
