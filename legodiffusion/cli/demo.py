"""``legodiffusion demo``: a burst over two workflows that share one base model, cold and then warm."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path

import numpy as np
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
    """The burst twice on one engine: cold (each worker loads its models and makes its first calls
    on the way) and warm (the same requests again, everything resident); the table gives both."""
    console = Console()
    console.print(f"models: {models_dir} (built if missing)")
    folders = write_tiny_models(models_dir)
    out.mkdir(parents=True, exist_ok=True)

    async def main():
        async with Engine({"sd15": folders["sd15"]}, EngineConfig(workers=workers, device="cpu", policy=policy)) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            engine.add_workflow(sd_txt2img("sd15", name="sd-styled", prompt_template="an oil painting of {text}, thick brush strokes"))
            cold = await _burst(engine, requests, size, steps)
            cold_workers, cold_stats = [w.stats() for w in engine.workers], copy.deepcopy(engine.coordinator.stats)
            warm = await _burst(engine, requests, size, steps)
            workers_ = [w.stats() for w in engine.workers]
            return cold, warm, cold_stats, engine.coordinator.stats, cold_workers, workers_, engine.plane.live_count()

    (cold, cold_wall), (warm, warm_wall), cold_stats, stats, cold_workers, wstats, live = asyncio.run(main())
    for i, (wf, r) in enumerate(warm):
        if r.ok:
            to_pil(r.outputs["image"])[0].save(out / f"{i:03d}-{wf}.png")

    table = Table(title=f"demo: {requests} concurrent requests, twice (cold, then warm), {workers} workers, {size}px, policy {policy}")
    table.add_column("what")
    table.add_column("cold", justify="right")
    table.add_column("warm", justify="right")
    for wf, status in sorted({(wf, r.status) for wf, r in cold + warm}):
        table.add_row(f"requests {wf} {status}", *(str(sum(1 for w, r in b if (w, r.status) == (wf, status))) for b in (cold, warm)))
    for op, n in sorted(stats.nodes_by_op.items()):
        c_n, c_d = cold_stats.nodes_by_op[op], cold_stats.dispatches_by_op[op]
        table.add_row(f"nodes run: {op}", f"{c_n} in {c_d} batches", f"{n - c_n} in {stats.dispatches_by_op[op] - c_d} batches")
    table.add_row(
        "batches mixing requests / workflows",
        f"{cold_stats.cross_request_batches} / {cold_stats.cross_workflow_batches}",
        f"{stats.cross_request_batches - cold_stats.cross_request_batches} / {stats.cross_workflow_batches - cold_stats.cross_workflow_batches}",
    )
    for c, w in zip(cold_workers, wstats, strict=True):
        table.add_row(
            f"worker {w.worker} busy share", f"{min(1.0, c.busy_s / cold_wall):.0%}", f"{min(1.0, (w.busy_s - c.busy_s) / warm_wall):.0%}"
        )
    table.add_row(
        "model loads by worker",
        " / ".join(str(c.loads) for c in cold_workers),
        " / ".join(str(w.loads - c.loads) for c, w in zip(cold_workers, wstats)),
    )
    lat = [[r.latency_s for _, r in b] for b in (cold, warm)]
    table.add_row("latency p50 / p95", *(f"{percentile(x, 50):.2f} s / {percentile(x, 95):.2f} s" for x in lat))
    table.add_row("throughput", f"{len(cold) / cold_wall:.2f} req/s", f"{len(warm) / warm_wall:.2f} req/s")
    gaps = [_pixel_gap(a, b) for (_, a), (_, b) in zip(cold, warm, strict=True) if a.ok and b.ok]
    table.add_row("images, cold vs warm: max diff", "", f"{max(gaps)} / 255 ({len(gaps)} pairs)" if gaps else "n/a (no pair succeeded)")
    table.add_row("tensors left in data plane", "", str(live))
    console.print(table)
    console.print(f"images (of the warm burst) written to {out}/")


def _pixel_gap(a: RunResult, b: RunResult) -> int:
    """The largest difference of one 8-bit pixel value between two runs' images (batched otherwise,
    a float may round differently)."""
    pa, pb = (np.asarray(to_pil(r.outputs["image"])[0], dtype=np.int16) for r in (a, b))
    return int(np.abs(pa - pb).max())
