"""``legodiffusion generate``: one request through the engine, with a progress bar.

The model folder's pipeline class picks the family and its built-in workflow (text-to-image;
with ``--init-image`` its image-to-image, with ``--mask`` too its inpainting, where the family
has one); ControlNets and LoRAs are registered next to the base model under their file or folder
names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from legodiffusion.config import EngineConfig
from legodiffusion.core.images import mask_mismatch
from legodiffusion.models.components import family_of
from legodiffusion.runtime.engine import Engine
from legodiffusion.runtime.images import to_pil
from legodiffusion.server.catalog import txt2img_for, workflows_for
from legodiffusion.workflow.errors import WorkflowError


@dataclass
class GenerateArgs:
    model: Path
    prompt: str
    output: Path
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    sampler: str | None = None
    workers: int = 1
    device: str = "auto"
    controlnets: list[Path] = field(default_factory=list)
    control_images: list[Path] = field(default_factory=list)
    control_scales: list[float] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)  # PATH[:WEIGHT]
    lora_k: int = 0
    dtype: str = "auto"
    component_dtypes: dict[str, str] = field(default_factory=dict)
    compile: bool = False
    init_image: Path | None = None
    strength: float | None = None
    mask: Path | None = None  # white repaints, black keeps


def _workflow(a: GenerateArgs):
    """The model's built-in workflow for what is asked: text-to-image, image-to-image, inpainting."""
    name = a.model.name
    if a.init_image is None:
        if a.strength is not None or a.mask is not None:
            raise ValueError("--strength and --mask edit an --init-image; give one")
        return txt2img_for(a.model, name, controlnets=tuple(cn.name for cn in a.controlnets))
    if a.controlnets:
        raise ValueError("--init-image takes no --controlnet yet")
    wanted = f"{name}-inpaint" if a.mask is not None else f"{name}-img2img"
    found = next((wf for wf in workflows_for(a.model, name) if wf.name == wanted), None)
    if found is None:
        raise ValueError(f"{a.model} has no built-in {'inpainting' if a.mask is not None else 'image-to-image'} workflow")
    return found


def _edit_inputs(a: GenerateArgs) -> dict:
    if a.init_image is None:
        return {}
    try:
        inputs = {"image": Image.open(a.init_image).convert("RGB")}
        if a.mask is not None:
            inputs["mask"] = Image.open(a.mask).convert("RGB")
    except OSError as exc:  # not there, or not an image
        raise ValueError(str(exc)) from None
    mismatch = mask_mismatch(inputs["image"], inputs.get("mask"))
    if mismatch is not None:
        raise ValueError(f"--mask: {mismatch}")
    if a.strength is not None:
        inputs["strength"] = a.strength
    return inputs


def _inputs(a: GenerateArgs, family: str, spec, lora_names: list[str], edit: dict) -> dict:
    inputs = {"prompt": a.prompt, "seed": a.seed, "height": a.height, "width": a.width, **edit}
    if a.steps is not None:
        inputs["steps"] = a.steps
    if family == "flux":
        if a.guidance is not None and "guidance" in spec.inputs:
            inputs["guidance"] = a.guidance
    else:
        # Qwen-Image calls its classifier-free guidance true_cfg_scale
        guidance = "true_cfg_scale" if "true_cfg_scale" in spec.inputs else "guidance_scale"
        for flag, name, value in (("--guidance", guidance, a.guidance), ("--negative-prompt", "negative_prompt", a.negative_prompt)):
            if value is not None:
                inputs[_taken(spec, flag, name)] = value
        if a.sampler is not None:
            inputs[_taken(spec, "--sampler", "sampler")] = a.sampler
    for i, path in enumerate(a.control_images):
        suffix = f"_{i}" if i else ""
        inputs["control_image" + suffix] = Image.open(path)
        if i < len(a.control_scales):
            inputs["control_scale" + suffix] = a.control_scales[i]
    if lora_names:
        inputs["loras"] = ",".join(lora_names)
        inputs["lora_k"] = a.lora_k
    return inputs


def _taken(spec, flag: str, name: str) -> str:
    """``name``, the workflow input ``flag`` sets, if the model's workflow has it (a step-distilled
    FLUX.2-klein takes no guidance, negative prompt or sampler)."""
    if name not in spec.inputs:
        raise ValueError(f"{flag}: the {spec.name} workflow takes no {name}; its inputs: {sorted(spec.inputs)}")
    return name


def generate_one(a: GenerateArgs) -> int:
    console = Console(stderr=True)
    if len(a.control_images) != len(a.controlnets):
        console.print(f"[red]error:[/] {len(a.controlnets)} --controlnet but {len(a.control_images)} --control-image")
        return 2
    try:
        family = family_of(a.model)
        models = {a.model.name: a.model}
        for cn in a.controlnets:
            models[cn.name] = cn
        lora_names = []
        for spec in a.loras:
            path, _, weight = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
            models[Path(path).stem] = Path(path)
            lora_names.append(Path(path).stem + (f":{weight}" if weight else ""))
        edit = _edit_inputs(a)  # its images checked before the workflow is looked for
        workflow = _workflow(a)
        engine = Engine(
            models, EngineConfig(workers=a.workers, device=a.device, dtype=a.dtype, component_dtypes=a.component_dtypes, compile=a.compile)
        )
        inputs = _inputs(a, family, workflow, lora_names, edit)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2

    async def main() -> int:
        async with engine:
            engine.add_workflow(workflow)
            with Progress(
                TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("nodes"), TimeElapsedColumn(), console=console
            ) as bar:
                task = bar.add_task("gen", total=None)
                try:
                    run = engine.submit(
                        workflow.name, inputs, on_progress=lambda r: bar.update(task, completed=r.nodes_done, total=r.nodes_total)
                    )
                except WorkflowError as exc:
                    console.print(f"[red]error:[/] {exc}")
                    return 2
                result = await run.future
        if not result.ok:
            console.print(f"[red]failed[/] at {result.node}: {result.error}")
            return 1
        to_pil(result.outputs["image"])[0].save(a.output)
        extra = f", LoRA active from step {result.notes['lora_active_from_step']}" if "lora_active_from_step" in result.notes else ""
        console.print(f"wrote {a.output} ({family}, {result.nodes} nodes, {result.latency_s:.2f} s{extra})")
        return 0

    return asyncio.run(main())
