"""Sharing and cross-workflow batching on the live local backend: the three-workflow mix (one
shared base model) served by the monolithic `bundle` baseline and by the default policy on the
same workers, side by side in one run (rounds alternate the order).

    python benchmarks/sharing.py [--requests 30] [--workers 2] [--rounds 2] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from legodiffusion import Engine, EngineConfig, sd_txt2img  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.stats import percentile  # noqa: E402

WORKFLOWS = {
    "guided": (sd_txt2img("sd15", name="guided"), dict(steps=8, guidance_scale=7.0)),
    "styled": (sd_txt2img("sd15", name="styled", prompt_template="an oil painting of {text}"), dict(steps=6, guidance_scale=5.0)),
    "fast": (sd_txt2img("sd15", name="fast"), dict(steps=4, guidance_scale=1.0)),
}


def requests(n: int, size: int) -> list[tuple[str, dict]]:
    names = list(WORKFLOWS)
    return [(names[i % 3], dict(WORKFLOWS[names[i % 3]][1], prompt=f"subject {i}", seed=i, height=size, width=size)) for i in range(n)]


async def serve(folder: Path, policy: str, workers: int, reqs) -> dict:
    async with Engine({"sd15": folder}, EngineConfig(workers=workers, device="cpu", policy=policy)) as engine:
        for spec, _ in WORKFLOWS.values():
            engine.add_workflow(spec)
        # warm every model copy the policy will use, so load time is not what we compare
        await asyncio.gather(*(engine.run(name, dict(args, steps=1)) for name, args in reqs[: 3 * workers]))
        t0 = time.perf_counter()
        runs = [engine.submit(name, args) for name, args in reqs]
        results = [await r.future for r in runs]
        wall = time.perf_counter() - t0
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        lat = [r.latency_s for r in results]
        stats = engine.coordinator.stats
        return {
            "throughput_rps": len(results) / wall,
            "p50_s": percentile(lat, 50),
            "p95_s": percentile(lat, 95),
            "cross_workflow_batches": stats.cross_workflow_batches,
            "unet_copies": sum(1 for w in engine.workers for (m, c, s) in w.models.keys() if c == "denoiser"),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    reqs = requests(args.requests, args.size)
    runs = {"bundle": [], "default": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_models(tmp)["sd15"]
        for r in range(args.rounds):
            for policy in ("bundle", "default") if r % 2 == 0 else ("default", "bundle"):
                runs[policy].append(asyncio.run(serve(folder, policy, args.workers, reqs)))
    med = {p: {k: statistics.median(x[k] for x in v) for k in v[0]} for p, v in runs.items()}
    tput = med["default"]["throughput_rps"] / med["bundle"]["throughput_rps"]
    p95 = med["bundle"]["p95_s"] / med["default"]["p95_s"]
    for p, m in med.items():
        print(
            f"{p:8s} {m['throughput_rps']:.2f} req/s  p50 {m['p50_s']:.2f}s  p95 {m['p95_s']:.2f}s  cross-workflow batches {m['cross_workflow_batches']:.0f}  UNet copies {m['unet_copies']:.0f}"
        )
    print(
        f"bundle config: {len(WORKFLOWS)} workflows dealt round-robin over {args.workers} workers, each with its own model copies; batches within a workflow only"
    )
    print(f"default / bundle throughput: {tput:.2f}x; bundle / default p95 latency: {p95:.2f}x")
    figures = {
        "requests": args.requests,
        "workers": args.workers,
        "rounds": args.rounds,
        "size_px": args.size,
        "throughput_ratio_default_over_bundle": round(tput, 3),
        "p95_ratio_bundle_over_default": round(p95, 3),
        "default": {k: round(v, 4) for k, v in med["default"].items()},
        "bundle": {k: round(v, 4) for k, v in med["bundle"].items()},
    }

    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        names = ["bundle", "default"]
        ax[0].bar(names, [med[n]["throughput_rps"] for n in names], color=["grey", "tab:blue"])
        ax[0].set_ylabel("requests / s")
        ax[1].bar(names, [med[n]["p95_s"] for n in names], color=["grey", "tab:blue"])
        ax[1].set_ylabel("p95 latency (s)")
        fig.suptitle(f"three-workflow mix, {args.requests} requests, {args.workers} workers")
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    report("sharing", figures, plot)


if __name__ == "__main__":
    main()
