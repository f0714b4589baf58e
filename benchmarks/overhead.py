"""Micro-serving overhead, measured side by side in one run on the same tiny model.

1. Decomposed execution (1 worker) vs the monolithic diffusers pipeline: wall time ratio for one
   20-step guided request (repeats interleaved, medians compared).
2. Coordinator overhead per node with a no-op operator: the state machine alone (dispatch +
   completion, no threads), and the whole local runtime (asyncio driver + worker thread + data plane).

    python benchmarks/overhead.py [--steps 20] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from legodiffusion import Engine, EngineConfig, sd_txt2img  # noqa: E402
from legodiffusion.core.coordinator import Coordinator, Request  # noqa: E402
from legodiffusion.core.messages import Completion, ItemResult, TensorRef  # noqa: E402
from legodiffusion.core.policy import make_policy  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.ops import default_registry  # noqa: E402
from legodiffusion.workflow.builder import WorkflowBuilder  # noqa: E402
from legodiffusion.workflow.expand import Expander, bind_inputs  # noqa: E402


def noop_chain(length: int):
    wf = WorkflowBuilder("noop-chain")
    n = wf.input("n", "int", default=length)
    src = wf.call("noop", value=1, id="src")
    loop = wf.loop(n, {"v": src.y}, lambda c: {"v": wf.call("noop", x=c.v, id="n").y}, id="chain")
    wf.output("y", loop.v)
    return wf.build()


def pipeline_vs_decomposed(folder: Path, steps: int, size: int, repeats: int) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", guidance_scale=7.5, height=size, width=size)

    def run_pipe():
        pipe(**args, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0), output_type="pt")

    async def main():
        async with Engine({"sd15": folder}, EngineConfig(workers=1)) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            inputs = dict(args, steps=steps, seed=0)
            await engine.run("sd-txt2img", inputs)  # warm: loads the components once
            run_pipe()
            ours, theirs = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                r = await engine.run("sd-txt2img", inputs)
                ours.append(time.perf_counter() - t)
                assert r.ok, r.error
                t = time.perf_counter()
                run_pipe()
                theirs.append(time.perf_counter() - t)
            return ours, theirs, r.nodes

    ours, theirs, nodes = asyncio.run(main())
    return {
        "decomposed_s": statistics.median(ours),
        "pipeline_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "nodes_per_request": nodes,
    }


def coordinator_only(nodes: int) -> float:
    """Microseconds per node for submit + dispatch + completion, no threads, no I/O."""
    ex = Expander(noop_chain(nodes), default_registry())
    inputs = bind_inputs(ex.spec, {})
    tmpl = ex.template(inputs)
    coord = Coordinator(1, make_policy("fcfs"))
    t = time.perf_counter()
    pending = coord.submit(Request(1, tmpl, inputs), 0.0).dispatches
    done = 0
    while pending:
        d = pending.pop()
        res = [ItemResult({p: TensorRef(i, 0, 8) for p, i in it.output_ids.items()}) for it in d.items]
        pending.extend(coord.on_complete(Completion(d.id, 0, res), 0.0).dispatches)
        done += len(d.items)
    return (time.perf_counter() - t) / done * 1e6


def runtime_per_node(nodes: int) -> float:
    """Microseconds per node through the whole local runtime with a no-op operator."""

    async def main():
        async with Engine({}, EngineConfig(workers=1)) as engine:
            engine.add_workflow(noop_chain(nodes))
            await engine.run("noop-chain", {"n": 10})
            t = time.perf_counter()
            r = await engine.run("noop-chain", {})
            return (time.perf_counter() - t) / r.nodes * 1e6

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--noop-nodes", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_models(tmp)["sd15"]
        e2e = pipeline_vs_decomposed(folder, args.steps, args.size, args.repeats)
    coord_us = min(coordinator_only(args.noop_nodes) for _ in range(3))
    runtime_us = min(runtime_per_node(args.noop_nodes) for _ in range(3))
    print(
        f"decomposed {e2e['decomposed_s'] * 1e3:.1f} ms vs diffusers pipeline {e2e['pipeline_s'] * 1e3:.1f} ms "
        f"({args.steps} steps, {args.size}px, {e2e['nodes_per_request']} nodes): ratio {e2e['ratio']:.3f} (target <= 1.10)"
    )
    print(
        f"coordinator per node (state machine only): {coord_us:.1f} us; whole local runtime per no-op node: {runtime_us:.1f} us (target <= 100)"
    )
    figures = {
        "steps": args.steps,
        "size_px": args.size,
        "decomposed_s": round(e2e["decomposed_s"], 5),
        "pipeline_s": round(e2e["pipeline_s"], 5),
        "decomposed_over_pipeline": round(e2e["ratio"], 4),
        "coordinator_us_per_node": round(coord_us, 2),
        "runtime_us_per_noop_node": round(runtime_us, 2),
    }

    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        ax[0].bar(["diffusers", "decomposed"], [e2e["pipeline_s"] * 1e3, e2e["decomposed_s"] * 1e3], color=["grey", "tab:blue"])
        ax[0].set_ylabel("ms per request")
        ax[0].set_title(f"{args.steps} steps, {args.size}px, 1 worker")
        ax[1].bar(["coordinator", "whole runtime"], [coord_us, runtime_us], color=["tab:green", "tab:blue"])
        ax[1].axhline(100, ls="--", color="red")
        ax[1].set_ylabel("us per no-op node")
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    report("overhead", figures, plot)


if __name__ == "__main__":
    main()
