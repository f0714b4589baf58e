"""Compiling the denoiser (``EngineConfig.compile``) on the CPU with the tiny models, side by side
in one run:

1. what a shape bucket costs on its first call: cold (inductor's cache empty, as on a fresh
   machine) and warm (dynamo's graphs dropped, inductor's on-disk cache kept, as in a restarted
   server on the same machine);
2. the steady-state time of one denoiser call (one sampling step of one guidance branch for the
   batch), compiled vs eager (interleaved repeats, medians), and how far the outputs differ.

Batches of 3 rows run as the bucket of 4. One intra-op thread by default: on a machine shared
with other work, OpenMP's spinning threads make multi-threaded timings of either path noisy.

    python benchmarks/compile.py [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import os
import tempfile

# before torch is imported: an empty inductor cache of our own makes the first calls cold
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ld-inductor-")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report, stamp  # noqa: E402
from legodiffusion.models.components import load_component  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.ops import default_registry  # noqa: E402
from legodiffusion.ops.base import Item  # noqa: E402
from legodiffusion.runtime.compile import CompileLog, compile_denoiser  # noqa: E402

#: (tiny model, image size in pixels, rows per call)
CASES = [("sd15", 64, 1), ("sd15", 64, 3), ("sd15", 128, 1), ("sd3", 64, 1), ("flux", 64, 1)]


def items_for(folder: Path, size: int, rows: int) -> list[Item]:
    op = default_registry().get("denoise")
    cfg = load_component(folder, "config")
    torch.manual_seed(0)
    items = op.example_items(cfg, "default", rows, size, "cpu")
    return [Item({**it.inputs, "sampler": replace(it.inputs["sampler"], step_index=i)}) for i, it in enumerate(items)]


def first_call_s(eager, items: list[Item], name: str) -> tuple[float, tuple]:
    """Seconds of a fresh compiled copy's first call, as its compile log records them."""
    log = CompileLog()
    default_registry().get("denoise").run(compile_denoiser(eager, log, name), "default", items)
    (event,) = log.events()
    return event.seconds, event.shape


def case(folder: Path, name: str, size: int, rows: int, repeats: int) -> dict:
    op = default_registry().get("denoise")
    eager = load_component(folder, "denoiser")
    items = items_for(folder, size, rows)
    cold_s, shape = first_call_s(eager, items, name)
    torch._dynamo.reset()  # dynamo's graphs go, inductor's cache on disk stays
    warm_s, _ = first_call_s(eager, items, name)
    compiled = compile_denoiser(eager, CompileLog(), name)
    op.run(compiled, "default", items)
    op.run(eager, "default", items)
    eager_s, compiled_s = [], []
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(repeats):
        t = time.perf_counter()
        want = op.run(eager, "default", items)
        eager_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = op.run(compiled, "default", items)
        compiled_s.append(time.perf_counter() - t)
    diff = max((a["noise"] - b["noise"]).abs().max().item() for a, b in zip(got, want))
    eager_ms, compiled_ms = statistics.median(eager_s) * 1e3, statistics.median(compiled_s) * 1e3
    return {
        "model": name,
        "size_px": size,
        "rows": rows,
        "bucket": list(shape),
        "compile_cold_s": round(cold_s, 2),
        "compile_warm_s": round(warm_s, 2),
        "eager_ms": round(eager_ms, 3),
        "compiled_ms": round(compiled_ms, 3),
        "eager_over_compiled": round(eager_ms / compiled_ms, 3),
        "max_abs_diff": float(f"{diff:.3g}"),
        "graphs_compiled_while_timing": counters["stats"]["unique_graphs"] - graphs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_tiny_models(tmp)
        for name, size, n in CASES:
            rows.append(case(folders[name], name, size, n, args.repeats))
            r = rows[-1]
            print(
                f"{name:5} {size:4d}px x{n} bucket {tuple(r['bucket'])}: compile {r['compile_cold_s']:6.1f} s cold, "
                f"{r['compile_warm_s']:5.1f} s warm; per call eager {r['eager_ms']:7.2f} ms, compiled {r['compiled_ms']:7.2f} ms "
                f"(x{r['eager_over_compiled']:.2f}); max abs diff {r['max_abs_diff']:.1e}",
                flush=True,
            )
    figures = {
        "threads": args.threads,
        "repeats": args.repeats,
        "compile_cold_s_total": round(sum(r["compile_cold_s"] for r in rows), 1),
        "cases": rows,
        "stamp": stamp([], started),
    }
    report("compile", figures)


if __name__ == "__main__":
    main()
