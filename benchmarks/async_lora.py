"""Bounded asynchronous LoRA loading: the first request with a LoRA that is not cached yet, waiting
for it (K = 0, equal to diffusers) vs starting without it and applying it from step K at the latest.

A realistically sized LoRA file (high rank on the tiny model: ~47 MiB on disk, dropped from the
page cache before each run so it is read from disk) makes its load measurable. Each run uses a fresh engine, so the LoRA is read from disk and injected anew; K = 0 and
K = 3 alternate in one process. The image difference is PSNR and max abs against the K = 0 image.

    python benchmarks/async_lora.py [--rank 4096] [--steps 20] [--size 128] [--repeats 3] [--k 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import report  # noqa: E402
from benchmarks.quality import psnr  # noqa: E402
from legodiffusion import Engine, EngineConfig, sd_txt2img  # noqa: E402
from legodiffusion.models.tiny import write_tiny_lora, write_tiny_models  # noqa: E402


def drop_from_page_cache(path: Path) -> None:
    """Make the next read come from disk, as for a LoRA no process has touched lately."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def first_request(base: Path, lora: Path, k: int, steps: int, size: int):
    async with Engine({"sd15": base, "big": lora}, EngineConfig(workers=1, device="cpu")) as engine:
        engine.add_workflow(sd_txt2img("sd15"))
        await engine.run("sd-txt2img", {"prompt": "warm up", "steps": 1, "height": size, "width": size})  # base model resident
        drop_from_page_cache(lora)
        r = await engine.run(
            "sd-txt2img", {"prompt": "a portrait", "steps": steps, "seed": 1, "height": size, "width": size, "loras": "big", "lora_k": k}
        )
        assert r.ok, r.error
        return r.latency_s, r.outputs["image"], r.notes.get("lora_active_from_step")


def load_time(base: Path, lora: Path) -> float:
    """Cold read of the file plus injection into the UNet and text encoder: the work K can hide."""
    import time

    from legodiffusion.models.components import load_component
    from legodiffusion.models.patches import inject, load_lora_file

    den, te = load_component(base, "denoiser"), load_component(base, "text_encoder")
    drop_from_page_cache(lora)
    t0 = time.perf_counter()
    state = load_lora_file(lora, "sd")
    inject(den, "x", state, "sd")
    inject(te, "x", state, "sd")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = write_tiny_models(tmp, families=("sd15",), extras=())["sd15"]
        lora = write_tiny_lora(Path(tmp) / "big-lora.safetensors", base, seed=7, rank=args.rank)
        size_mb = lora.stat().st_size / 2**20
        load_s = statistics.median(load_time(base, lora) for _ in range(3))
        lat = {0: [], args.k: []}
        images, active = {}, {}
        for _ in range(args.repeats):
            for k in (0, args.k):
                s, image, step = asyncio.run(first_request(base, lora, k, args.steps, args.size))
                lat[k].append(s)
                images[k], active[k] = image, step
    wait_s, async_s = statistics.median(lat[0]), statistics.median(lat[args.k])
    diff = float((images[0] - images[args.k]).abs().max())
    quality = psnr(images[0], images[args.k])
    print(
        f"LoRA file {size_mb:.1f} MiB (rank {args.rank}), cold load + inject {load_s * 1e3:.0f} ms; first request, {args.steps} steps at {args.size}px, 1 worker:"
    )
    print(f"  K=0 (wait, equals diffusers): {wait_s * 1e3:.0f} ms; LoRA active from step {active[0]}")
    print(f"  K={args.k}: {async_s * 1e3:.0f} ms ({wait_s / async_s:.2f}x faster); LoRA active from step {active[args.k]}")
    print(f"  image vs K=0: PSNR {quality:.1f} dB, max abs {diff:.4f}")
    figures = {
        "lora_mib": round(size_mb, 1),
        "lora_load_s": round(load_s, 4),
        "rank": args.rank,
        "steps": args.steps,
        "size_px": args.size,
        "k": args.k,
        "latency_k0_s": round(wait_s, 4),
        "latency_k_s": round(async_s, 4),
        "speedup": round(wait_s / async_s, 3),
        "lora_active_from_step_k0": active[0],
        "lora_active_from_step_k": active[args.k],
        "psnr_db_vs_k0": round(quality, 2),
        "max_abs_vs_k0": round(diff, 5),
    }

    def plot(path):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(["K=0 (wait)", f"K={args.k}"], [wait_s * 1e3, async_s * 1e3], color=["grey", "tab:blue"])
        ax.set_ylabel("first-request latency (ms)")
        ax.set_title(f"{size_mb:.0f} MiB LoRA; PSNR vs K=0: {quality:.1f} dB")
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    report("async_lora", figures, plot)


if __name__ == "__main__":
    main()
