"""``legodiffusion generate``: one request through the engine, with a progress bar."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from legodiffusion.config import EngineConfig
from legodiffusion.runtime.engine import Engine
from legodiffusion.runtime.images import to_pil
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.errors import WorkflowError


def generate_one(model: Path, prompt, negative_prompt, steps, guidance, seed, height, width, sampler, workers, device, output: Path) -> int:
    console = Console(stderr=True)
    inputs = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "steps": steps,
        "guidance_scale": guidance,
        "seed": seed,
        "height": height,
        "width": width,
        "sampler": sampler,
    }

    async def main() -> int:
        try:
            engine = Engine({model.name: model}, EngineConfig(workers=workers, device=device))
        except FileNotFoundError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        async with engine:
            engine.add_workflow(sd_txt2img(model.name))
            with Progress(
                TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("nodes"), TimeElapsedColumn(), console=console
            ) as bar:
                task = bar.add_task("gen", total=None)
                try:
                    run = engine.submit(
                        "sd-txt2img", inputs, on_progress=lambda r: bar.update(task, completed=r.nodes_done, total=r.nodes_total)
                    )
                except WorkflowError as exc:
                    console.print(f"[red]error:[/] {exc}")
                    return 2
                result = await run.future
        if not result.ok:
            console.print(f"[red]failed[/] at {result.node}: {result.error}")
            return 1
        to_pil(result.outputs["image"])[0].save(output)
        console.print(f"wrote {output} ({result.nodes} nodes, {result.latency_s:.2f} s)")
        return 0

    return asyncio.run(main())
