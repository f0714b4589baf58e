"""Shared bits of the benchmark scripts: where results go, and how they are reported."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


def report(name: str, figures: dict, plot=None) -> None:
    """Write ``results/NAME.json`` (and ``NAME.png`` via ``plot(path)``), then print the figures
    as the last line: one JSON object."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        plot(RESULTS / f"{name}.png")
    print(json.dumps(figures))
