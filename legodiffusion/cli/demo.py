"""``legodiffusion demo``: a burst over two workflows that share one base model."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legodiffusion.config import EngineConfig
from legodiffusion.models.tiny import write_tiny_models
from legodiffusion.runtime.engine import Engine
from legodiffusion.runtime.images import to_pil
from legodiffusion.runtime.runs import RunResult
from legodiffusion.stats import percentile
from legodiffusion.workflow.catalog import sd_txt2img

PROMPTS = ["a lighthouse at dusk", "a red fox in snow", "a bowl of ramen", "a sailing boat", "a city at night", "an old oak tree"]


async def _burst(engine: Engine, requests: int, size: int, steps: int) -> tuple[list[tuple[str, RunResult]], float]:
    jobs = []
    for i in range(requests):
        if i % 2 == 0:
            wf, inputs = "sd-txt2img", {"steps": steps, "guidance_scale": 7.5}
        else:
            wf, inputs = "sd-styled", {"steps": max(1, steps // 2), "guidance_scale": 1.0}
        inputs.update(prompt=PROMPTS[i % len(PROMPTS)], seed=i, height=size, width=size)
        jobs.append((wf, engine.submit(wf, inputs)))
    t0 = time.perf_counter()
    results = [(wf, await run.future) for wf, run in jobs]
    return results, time.perf_counter() - t0


def run_demo(requests: int, workers: int, size: int, steps: int, out: Path, models_dir: Path, policy: str = "default") -> None:
    console = Console()
    console.print(f"models: {models_dir} (built if missing)")
    folders = write_tiny_models(models_dir)
    out.mkdir(parents=True, exist_ok=True)

    async def main():
        async with Engine({"sd15": folders["sd15"]}, EngineConfig(workers=workers, device="cpu", policy=policy)) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            engine.add_workflow(sd_txt2img("sd15", name="sd-styled", prompt_template="an oil painting of {text}, thick brush strokes"))
            results, wall = await _burst(engine, requests, size, steps)
            return results, wall, engine.coordinator.stats, [w.stats() for w in engine.workers], engine.plane.live_count()

    results, wall, stats, wstats, live = asyncio.run(main())
    for i, (wf, r) in enumerate(results):
        if r.ok:
            to_pil(r.outputs["image"])[0].save(out / f"{i:03d}-{wf}.png")

    table = Table(title=f"demo: {requests} concurrent requests, {workers} workers, {size}px, policy {policy}")
    table.add_column("what")
    table.add_column("value", justify="right")
    by_wf = Counter((wf, r.status) for wf, r in results)
    for (wf, status), n in sorted(by_wf.items()):
        table.add_row(f"requests {wf} {status}", str(n))
    for op, n in sorted(stats.nodes_by_op.items()):
        table.add_row(f"nodes run: {op}", f"{n} in {stats.dispatches_by_op[op]} batches")
    table.add_row("batches mixing requests / workflows", f"{stats.cross_request_batches} / {stats.cross_workflow_batches}")
    for w in wstats:
        table.add_row(f"worker {w.worker} busy share", f"{min(1.0, w.busy_s / wall):.0%} (model loads {w.loads})")
    lat = [r.latency_s for _, r in results]
    table.add_row("latency p50 / p95", f"{percentile(lat, 50):.2f} s / {percentile(lat, 95):.2f} s")
    table.add_row("throughput", f"{len(results) / wall:.2f} req/s")
    table.add_row("tensors left in data plane", str(live))
    console.print(table)
    console.print(f"images written to {out}/")
