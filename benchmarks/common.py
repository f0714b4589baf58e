"""Shared bits of the benchmark scripts: where results go, and how they are reported."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    if "torch" in sys.modules:  # the simulator benchmarks never import it
        import torch

        out.update(torch=torch.__version__, threads=torch.get_num_threads())
    return out


def stamp(files: list[Path], started: float) -> dict:
    """What a result was produced from: the commit (and whether the tree differed from it), a
    hash of the data files it read, the command, and how long it took."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.read_bytes())
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "legodiffusion", "benchmarks/*.py"))
    return {
        "commit": git("rev-parse", "HEAD") + ("+uncommitted" if dirty else ""),
        "inputs_sha256": digest.hexdigest()[:16],
        "inputs": [str(f.relative_to(root)) for f in sorted(files)],
        "command": " ".join(["python", *sys.argv]),
        "wall_s": round(time.time() - started, 1),
    }


def report(name: str, figures: dict, plot=None) -> None:
    """Write ``results/NAME.json`` (and ``NAME.png`` via ``plot(path)``), then print the figures
    (less any ``detail``) as the last line: one JSON object."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        plot(RESULTS / f"{name}.png")
    print(json.dumps({k: v for k, v in figures.items() if k != "detail"}))
