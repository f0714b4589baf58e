"""Write benchmarks/traces/replay.csv: a trace for the CSV-replay workload that no policy was
tuned on. Gamma inter-arrivals with a coefficient of variation of 2.5 (bursty, unlike the Poisson
traces), over the paper workflows with their popularity ranking reversed (the rare workflows
become the common ones), timestamps starting at an arbitrary epoch, and a seed input per row.

    python benchmarks/traces/make_replay.py
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from legodiffusion.sim.traces import gamma  # noqa: E402
from legodiffusion.sim.workload import paper_workflows  # noqa: E402

OUT = Path(__file__).with_name("replay.csv")


def main() -> None:
    wfs = paper_workflows()
    pops = sorted(wf.popularity for wf in wfs)
    ranked = sorted(wfs, key=lambda wf: -wf.popularity)
    mix = {wf.name: pops[i] for i, wf in enumerate(ranked)}  # most popular gets the smallest share
    arrivals = gamma(1.0, 2.5, 3600.0, mix, seed=20261201)
    rng = random.Random(7)
    with open(OUT, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp_s", "workflow", "seed"])
        for a in arrivals:
            w.writerow([f"{1764547200 + a.t:.3f}", a.workflow, rng.randrange(2**31)])
    print(f"wrote {len(arrivals)} arrivals to {OUT}")


if __name__ == "__main__":
    main()
