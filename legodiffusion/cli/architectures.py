"""``legodiffusion architectures``: what the full-size architectures weigh, computed on the meta
device from their published configs; ``--write-sim`` rewrites the simulator's weight figures."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from legodiffusion.models.architectures import (
    ARCHITECTURES,
    SIM_DTYPE,
    architecture,
    dtype_of,
    rewrite_sim_weights,
    table,
)

#: columns enough for the longest architecture name and a 12B model's byte count
WIDTH = 100


def write_sim(path: Path) -> list[tuple[str, str, int | None, int]]:
    """Rewrite the sim file's weight figures in place; (model, component, old bytes, new bytes) per figure."""
    data = json.loads(path.read_text())
    new = rewrite_sim_weights(data)
    changes = []
    for model, entry in new["models"].items():
        old = data["models"][model].get("weights_bytes", {})
        for comp, nbytes in entry.get("weights_bytes", {}).items():
            if comp != "source":
                changes.append((model, comp, old.get(comp), nbytes))
    path.write_text(json.dumps(new, indent=1) + "\n")
    return changes


def run_architectures(dtype: str = "bf16", as_json: bool = False, names: list[str] | None = None, sim_file: Path | None = None) -> int:
    console = Console(width=max(Console().width, WIDTH))
    try:
        torch_dtype = dtype_of(dtype)
        for name in names or []:
            architecture(name)
    except (KeyError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc.args[0]}")
        return 2
    if sim_file is not None:
        if torch_dtype != SIM_DTYPE:
            console.print(f"[red]error:[/] the simulator's figures are {SIM_DTYPE}; drop --dtype or pass bf16")
            return 2
        changes = write_sim(sim_file)
        out = Table(title=f"{sim_file}: weights_bytes (bf16)")
        for col, justify in (("model", "left"), ("component", "left"), ("old bytes", "right"), ("new bytes", "right"), ("GB", "right")):
            out.add_column(col, justify=justify)
        for model, comp, before, nbytes in changes:
            out.add_row(model, comp, "-" if before is None else f"{before:,}", f"{nbytes:,}", f"{nbytes / 1e9:.3f}")
        console.print(out)
        return 0
    rows = table(torch_dtype, names)
    if as_json:
        print(json.dumps([{**row, "dtype": str(torch_dtype).removeprefix("torch.")} for row in rows], indent=1))
        return 0
    out = Table(title=f"Full-size architectures, weights in {str(torch_dtype).removeprefix('torch.')} (meta device, published configs)")
    for col, justify in (("architecture", "left"), ("component", "left"), ("parameters", "right"), ("bytes", "right"), ("GB", "right")):
        out.add_column(col, justify=justify)
    for row in rows:
        out.add_row(row["architecture"], row["component"], f"{row['parameters']:,}", f"{row['bytes']:,}", f"{row['bytes'] / 1e9:.3f}")
    console.print(out)
    console.print(f"{len(names or ARCHITECTURES)} architectures; sources: legodiffusion/models/data/architectures.json")
    return 0
