"""What a preload (``Engine.preload``, ``serve --preload``) saves the first requests: the demo's
burst (12 requests over two workflows sharing the tiny SD 1.5, 2 workers) as the first work of a
fresh process, with and without preloading the model first, and the same burst again once warm.
Each trial is its own process (a process's first model calls pay one-time set-up that a second
engine in the same process would not), the two kinds alternate, and the report gives each
trial and the medians.

    python benchmarks/preload.py [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report, stamp  # noqa: E402

REQUESTS, SIZE, STEPS = 12, 64, 8


def trial(folder: str, preload: bool) -> dict:
    """One fresh engine: optionally preload, then the burst cold, then again warm."""
    from legodiffusion.cli.demo import _burst
    from legodiffusion.config import EngineConfig
    from legodiffusion.runtime.engine import Engine
    from legodiffusion.stats import percentile
    from legodiffusion.workflow.catalog import sd_txt2img

    async def main() -> dict:
        async with Engine({"sd15": folder}, EngineConfig(workers=2, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            engine.add_workflow(sd_txt2img("sd15", name="sd-styled", prompt_template="an oil painting of {text}"))
            preload_s = (await engine.preload(["sd15"])).seconds if preload else 0.0
            out = {"preload": preload, "preload_s": round(preload_s, 3)}
            loads = engine.coordinator.stats.loads_by_worker
            before = sum(loads.values())
            for name in ("first", "warm"):
                results, wall = await _burst(engine, REQUESTS, SIZE, STEPS)
                assert all(r.ok for _, r in results), [r.error for _, r in results if not r.ok]
                lat = [r.latency_s for _, r in results]
                out[name] = {
                    "req_s": round(REQUESTS / wall, 2),
                    "p50_s": round(percentile(lat, 50), 3),
                    "p95_s": round(percentile(lat, 95), 3),
                    "loads": sum(loads.values()) - before,
                }
                before = sum(loads.values())
            return out

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials of each kind (alternating, each in its own process)")
    parser.add_argument("--trial", nargs=2, metavar=("FOLDER", "PRELOAD"), help=argparse.SUPPRESS)  # one trial, in a child
    args = parser.parse_args(argv)
    if args.trial:
        print(json.dumps(trial(args.trial[0], args.trial[1] == "1")))
        return {}
    started = time.time()
    from legodiffusion.models.tiny import write_tiny_models

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(write_tiny_models(Path(tmp))["sd15"])
        for i in range(args.trials):
            for preload in (False, True):
                cmd = [sys.executable, __file__, "--trial", folder, "1" if preload else "0"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                rows.append(json.loads(out))
                print(f"trial {i + 1}, preload {preload}: {rows[-1]}", flush=True)

    def med(preload: bool, burst: str, key: str) -> float:
        return statistics.median(r[burst][key] for r in rows if r["preload"] == preload)

    summary = {
        kind: {
            "first_req_s": med(p, "first", "req_s"),
            "first_p50_s": med(p, "first", "p50_s"),
            "warm_req_s": med(p, "warm", "req_s"),
            "preload_s": statistics.median(r["preload_s"] for r in rows if r["preload"] == p),
        }
        for kind, p in (("cold", False), ("preloaded", True))
    }
    figures = {
        "setup": f"tiny sd15, 2 workers, {REQUESTS} requests over two workflows, {SIZE}px, {STEPS} steps, CPU",
        "medians": summary,
        "first_burst_p50_ratio": round(summary["cold"]["first_p50_s"] / summary["preloaded"]["first_p50_s"], 2),
        "stamp": stamp([], started),
        "detail": rows,
    }
    report("preload", figures)
    return figures


if __name__ == "__main__":
    main()
