"""What the stop hooks cost: each model call of the tiny SD1.5 with and without the block
pre-hooks that let a cancelled call stop at its next block boundary (legodiffusion/runtime/stopping.py),
measured side by side (repeats interleaved; the fastest of each compared, as the least disturbed
on a shared machine), how many hooks each component gets, and the cost of one hook (a block
called with and without it, many times): hooks x that is the overhead a call pays.

    python benchmarks/stop_hooks.py [--size 64] [--repeats 30]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from legodiffusion.models.components import load_component, modules_of  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.ops import default_registry  # noqa: E402
from legodiffusion.runtime.stopping import StopFlags, blocks  # noqa: E402

CALLS = (("encode_prompt", "default"), ("denoise", "guided"), ("vae_decode", "default"))


def measure(folder: Path, size: int, repeats: int) -> dict:
    registry = default_registry()
    cfg = load_component(folder, "config")
    out = {}
    for op_name, mode in CALLS:
        op = registry.get(op_name)
        if mode not in op.modes:
            mode = next(iter(op.modes))
        plain = load_component(folder, op.component)
        hooked = copy.deepcopy(plain)
        flags = StopFlags()
        flags.guard(hooked)
        items = op.example_items(cfg, mode, 1, size, "cpu")
        for model in (plain, hooked):  # warm-up
            op.run(model, mode, items)
        times: dict[str, list[float]] = {"plain": [], "hooked": []}
        for _ in range(repeats):
            for name, model in (("plain", plain), ("hooked", hooked)):
                t = time.perf_counter()
                op.run(model, mode, items)
                times[name].append(time.perf_counter() - t)
        plain_s, hooked_s = min(times["plain"]), min(times["hooked"])
        out[op_name] = {
            "hooks": sum(len(blocks(m)) for m in modules_of(hooked)),
            "plain_ms": round(plain_s * 1e3, 3),
            "hooked_ms": round(hooked_s * 1e3, 3),
            "overhead_us": round((hooked_s - plain_s) * 1e6, 1),
            "overhead_pct": round(100 * (hooked_s / plain_s - 1), 2),
        }
    return out


def per_hook_us(calls: int = 20000) -> float:
    """Microseconds one stop pre-hook adds to a block call (fastest of 5 rounds)."""
    block = torch.nn.Sequential(torch.nn.Identity())
    hooked = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Identity())])
    StopFlags().guard(hooked)
    x = torch.zeros(1)
    best = []
    for module in (block, hooked[0]):
        rounds = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(calls):
                module(x)
            rounds.append((time.perf_counter() - t) / calls)
        best.append(min(rounds))
    return round((best[1] - best[0]) * 1e6, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_models(Path(tmp))["sd15"]
        calls = measure(folder, args.size, args.repeats)
    hook_us = per_hook_us()
    for c in calls.values():
        c["hooks_x_per_hook_us"] = round(c["hooks"] * hook_us, 1)
    report("stop_hooks", {"model": "tiny sd15", "size": args.size, "repeats": args.repeats, "per_hook_us": hook_us, "calls": calls})


if __name__ == "__main__":
    main()
