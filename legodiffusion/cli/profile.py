"""``legodiffusion profile``: measure a model's operators on this device and cache the profile."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legodiffusion.config import EngineConfig
from legodiffusion.models.precision import Precision
from legodiffusion.ops import default_registry
from legodiffusion.profiles.book import ModelProfile
from legodiffusion.profiles.profiler import measure, precision_tag, profile_path
from legodiffusion.server.catalog import workflows_for
from legodiffusion.workflow.catalog import BUILTIN_WORKFLOWS
from legodiffusion.workflow.spec import CondNode, LoopNode, OpNode, WorkflowSpec, spec_from_json


def workflow_ops(spec: WorkflowSpec) -> list[tuple[str, str]]:
    """Every (operator, mode) a workflow can run, over all loops and branches."""
    found: list[tuple[str, str]] = []

    def walk(nodes):
        for n in nodes:
            if isinstance(n, OpNode):
                if (n.op, n.mode) not in found:
                    found.append((n.op, n.mode))
            elif isinstance(n, LoopNode):
                walk(n.body)
            elif isinstance(n, CondNode):
                walk(n.then.nodes)
                walk(n.otherwise.nodes)

    walk(spec.nodes)
    return found


def load_workflows(name_or_file: str | None, model: Path) -> list[WorkflowSpec]:
    """A built-in workflow by name, a JSON spec file, or (None) every built-in workflow the server
    registers for the model (text-to-image and the editing workflows)."""
    model_name = model.name
    if name_or_file is None:
        return workflows_for(model, model_name)
    if name_or_file in BUILTIN_WORKFLOWS:
        return [BUILTIN_WORKFLOWS[name_or_file](model_name)]
    path = Path(name_or_file)
    if not path.exists():
        raise FileNotFoundError(f"{name_or_file!r} is neither a built-in workflow ({sorted(BUILTIN_WORKFLOWS)}) nor a JSON file")
    return [spec_from_json(json.loads(path.read_text()))]


def run_profile(
    model: Path,
    workflow: str | None,
    device: str,
    batches: list[int],
    sizes: list[int],
    repeats: int,
    force: bool,
    out_dir: Path | None,
    precision: Precision | None = None,
) -> Path:
    console = Console()
    device = EngineConfig(device=device).worker_devices()[0]
    specs = load_workflows(workflow, model)
    path = profile_path(model, device, out_dir, precision)
    if path.exists() and not force:
        console.print(f"cached: {path} (use --force to measure again)")
        prof = ModelProfile.load(path)
    else:
        ops = list(dict.fromkeys(op for spec in specs for op in workflow_ops(spec)))
        with console.status("profiling") as status:
            prof = measure(
                model,
                default_registry(),
                ops,
                device,
                tuple(batches),
                tuple(sizes),
                repeats,
                progress=lambda op, mode, b, s: status.update(f"profiling {op}/{mode} batch {b} at {s or '-'}px"),
                precision=precision,
            )
        prof.save(path)
        console.print(f"wrote {path}")
    table = Table(title=f"{model.name} on {prof.device}, weights {precision_tag(model, device, precision)}")
    for col in ("op", "mode", "batch", "px", "latency ms", "peak MiB"):
        table.add_column(col, justify="right" if col not in ("op", "mode") else "left")
    for p in prof.ops:
        table.add_row(p.op, p.mode, str(p.batch), str(p.px), f"{p.latency_s * 1e3:.2f}", f"{p.peak_bytes / 2**20:.2f}")
    console.print(table)
    comps = Table(title="components")
    for col in ("component", "disk->host ms", "host->device ms", "weights MiB"):
        comps.add_column(col)
    for name, c in prof.components.items():
        comps.add_row(name, f"{c.load_disk_s * 1e3:.1f}", f"{c.load_device_s * 1e3:.1f}", f"{c.weight_bytes / 2**20:.2f}")
    console.print(comps)
    return path
