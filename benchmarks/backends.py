"""The Ray backend against the local backend, side by side in one run on the same tiny workflow.

1. Per-node overhead: a chain of no-op nodes on one worker (every node is a dispatch to the
   worker and a completion back: a thread hand-off locally, a Ray actor call and poll on Ray).
   For scale, one empty Ray actor call is timed too: a node costs a submit and a poll reply.
2. End-to-end latency of one 20-step guided SD request (tiny model, 64 px) on 1 and on 2
   workers; on 2 Ray workers the tensors move actor to actor through the object store, and in a
   third configuration over GLOO with Ray's direct tensor transport.

Both backends compute with one intra-op thread per worker. Ray runs as a local one-node cluster
started by this script (actors are separate processes, as on a real cluster).

    python benchmarks/backends.py [--repeats 5] [--noop-nodes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from benchmarks.overhead import noop_chain  # noqa: E402
from legodiffusion import Engine, EngineConfig, sd_txt2img  # noqa: E402
from legodiffusion.config import RayConfig  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402

REQUEST = {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "steps": 20, "guidance_scale": 7.5, "height": 64, "width": 64}


def config(backend: str, workers: int, transport: str = "object_store") -> EngineConfig:
    return EngineConfig(workers=workers, device="cpu", backend=backend, autoscale_interval_s=0, ray=RayConfig(tensor_transport=transport))


async def per_node_us(backend: str, nodes: int, repeats: int) -> float:
    async with Engine({}, config(backend, 1)) as engine:
        engine.add_workflow(noop_chain(nodes))
        await engine.run("noop-chain", {"n": 20})  # warm
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            r = await engine.run("noop-chain", {})
            best = min(best, (time.perf_counter() - t) / r.nodes * 1e6)
        return best


async def latencies(folder: Path, workers: int, repeats: int) -> dict[str, list[float]]:
    """All backends up at once; requests rotate between them so drift hits each alike. On 2
    workers, Ray runs twice: pulls through the object store, and pushes over GLOO (RDT)."""
    configs = {"local": config("local", workers), "ray": config("ray", workers)}
    if workers > 1:
        configs["ray_gloo"] = config("ray", workers, "gloo")
    engines = {name: Engine({"sd15": folder}, c) for name, c in configs.items()}
    out: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for e in engines.values():
            await e.start()
            e.add_workflow(sd_txt2img("sd15"))
            await e.run("sd-txt2img", dict(REQUEST, seed=0))  # warm: every worker loads what it runs
        for i in range(repeats):
            for name, e in engines.items():
                t = time.perf_counter()
                r = await e.run("sd-txt2img", dict(REQUEST, seed=i))
                assert r.ok, r.error
                out[name].append(time.perf_counter() - t)
        for name, e in engines.items():
            if name != "local":
                traffic = e.backend.traffic()
                out[f"{name}_moved_bytes"] = [traffic["pulled_bytes"] + traffic["pushed_bytes"]]
    finally:
        for e in engines.values():
            await e.stop()
    return out


def bare_actor_call_us(calls: int = 300) -> float:
    """Ray's own floor on this machine: one empty actor method call, awaited."""
    import ray

    @ray.remote(num_cpus=0.25)
    class Echo:
        def call(self) -> None:
            return None

    echo = Echo.remote()
    ray.get(echo.call.remote())
    t = time.perf_counter()
    for _ in range(calls):
        ray.get(echo.call.remote())
    us = (time.perf_counter() - t) / calls * 1e6
    ray.kill(echo)
    return us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--noop-nodes", type=int, default=500)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, namespace="legodiffusion", _temp_dir="/tmp/ldbench", log_to_driver=False)
    try:
        floor = bare_actor_call_us()
        node = {b: asyncio.run(per_node_us(b, args.noop_nodes, 3)) for b in ("local", "ray")}
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_tiny_models(tmp)["sd15"]
            lat = {w: asyncio.run(latencies(folder, w, args.repeats)) for w in (1, 2)}
    finally:
        ray.shutdown()
    med = {w: {b: statistics.median(lat[w][b]) for b in ("local", "ray", "ray_gloo") if b in lat[w]} for w in lat}
    print(
        f"per no-op node, 1 worker: local {node['local']:.0f} us, ray {node['ray']:.0f} us ({node['ray'] / node['local']:.1f}x); "
        f"one bare Ray actor call here: {floor:.0f} us"
    )
    for w in (1, 2):
        print(
            f"20-step guided request, {w} worker(s): local {med[w]['local'] * 1e3:.0f} ms, ray {med[w]['ray'] * 1e3:.0f} ms "
            f"(ray/local {med[w]['ray'] / med[w]['local']:.2f}; {lat[w]['ray_moved_bytes'][0] / 1e6:.2f} MB moved actor to actor)"
        )
    print(
        f"20-step guided request, 2 workers, ray with GLOO direct transport: {med[2]['ray_gloo'] * 1e3:.0f} ms "
        f"(ray_gloo/local {med[2]['ray_gloo'] / med[2]['local']:.2f}; {lat[2]['ray_gloo_moved_bytes'][0] / 1e6:.2f} MB moved)"
    )
    figures = {
        "noop_nodes": args.noop_nodes,
        "local_us_per_node": round(node["local"], 1),
        "ray_us_per_node": round(node["ray"], 1),
        "ray_over_local_per_node": round(node["ray"] / node["local"], 2),
        "bare_ray_actor_call_us": round(floor, 1),
        **{f"local_latency_s_{w}w": round(med[w]["local"], 4) for w in (1, 2)},
        **{f"ray_latency_s_{w}w": round(med[w]["ray"], 4) for w in (1, 2)},
        **{f"ray_over_local_latency_{w}w": round(med[w]["ray"] / med[w]["local"], 3) for w in (1, 2)},
        "ray_gloo_latency_s_2w": round(med[2]["ray_gloo"], 4),
        "ray_gloo_over_local_latency_2w": round(med[2]["ray_gloo"] / med[2]["local"], 3),
        "repeats": args.repeats,
    }

    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        ax[0].bar(["local", "ray"], [node["local"], node["ray"]], color=["tab:blue", "tab:orange"])
        ax[0].set_ylabel("us per no-op node")
        ax[0].set_title("per-node overhead, 1 worker")
        x = range(2)
        ax[1].bar([i - 0.2 for i in x], [med[w]["local"] * 1e3 for w in (1, 2)], 0.4, label="local", color="tab:blue")
        ax[1].bar([i + 0.2 for i in x], [med[w]["ray"] * 1e3 for w in (1, 2)], 0.4, label="ray", color="tab:orange")
        ax[1].set_xticks(list(x), ["1 worker", "2 workers"])
        ax[1].set_ylabel("ms per request (median)")
        ax[1].set_title("20-step guided, tiny SD, 64 px")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    report("backends", figures, plot)


if __name__ == "__main__":
    main()
