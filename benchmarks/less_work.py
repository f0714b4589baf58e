"""Less work per image: the approximate cache across requests (NIRVANA) on a stream of prompts
with paraphrases, against the same stream uncached.

The bundled prompt set (benchmarks/prompts/paraphrases.txt: 65 clusters of 5 paraphrases) is
shuffled into one stream of requests run one after another on one worker three ways: uncached (the reference images), with the cache and its configured thresholds
(NIRVANA's by default), and, for each k the cache saves, with every lookup forced to start from
step k (any cached prompt of the same key qualifies), which gives the quality-vs-k curve a user
picks thresholds from. Reported: hit rate, the share of hits on a paraphrase of the same cluster,
mean steps skipped, device-seconds saved (here CPU: the process's CPU time, which other load on
the machine hardly moves, and the worker's busy wall time), latency, and PSNR / SSIM of
each cached request's decoded image against its uncached one, per k. Every request uses the same
seed (``--distinct-seeds``: its index), so a cached image differs from its uncached one only by the
first k steps having been run for another prompt.

The models are the tiny random-weight ones: the similarities of their text embeddings mean
nothing (every prompt looks alike), so the figures check the mechanism (what is skipped, what
it saves, that images move away from the uncached ones as k grows), not the quality a real model
keeps; run with --model-root on real weights for that.

    python benchmarks/less_work.py [--prompts 200] [--steps 20] [--size 64] [--per-k 25] [--distinct-seeds]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning waiters stall a busy machine

import argparse  # noqa: E402
import asyncio  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import report, stamp  # noqa: E402
from benchmarks.quality import psnr, ssim  # noqa: E402
from legodiffusion import Engine, EngineConfig, sd_txt2img  # noqa: E402
from legodiffusion.core.approx import ApproxConfig  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.stats import percentile  # noqa: E402

PROMPTS = ROOT / "benchmarks" / "prompts" / "paraphrases.txt"


def clusters(path: Path = PROMPTS) -> list[list[str]]:
    """The prompt set: clusters of paraphrases (blank-line separated, ``#`` lines are comments)."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
    return [block.split("\n") for block in text.strip().split("\n\n")]


@dataclass
class Run:
    prompt: str
    cluster: int
    request: int
    latency_s: float
    busy_s: float  # the worker's busy time on this request (its device-seconds)
    image: torch.Tensor
    notes: dict


async def stream(folder: Path, requests: list[tuple[str, int]], args, approx: ApproxConfig | None) -> tuple[list[Run], float]:
    """``requests`` ((prompt, cluster) pairs) one after another on a fresh one-worker engine; the
    runs and the CPU seconds they took."""
    config = EngineConfig(workers=1, device="cpu", approx=approx or ApproxConfig())
    out = []
    async with Engine({"sd15": folder}, config) as engine:
        engine.add_workflow(sd_txt2img("sd15"))
        await engine.run("sd-txt2img", {"prompt": "warm up", "steps": 1, "height": args.size, "width": args.size})  # models resident
        worker = engine.workers[0]
        cpu0 = time.process_time()
        for i, (prompt, cluster) in enumerate(requests):
            seed = i if args.distinct_seeds else 0
            inputs = {"prompt": prompt, "steps": args.steps, "seed": seed, "height": args.size, "width": args.size}
            before = worker.busy_s
            r = await engine.run("sd-txt2img", {**inputs, "approx_cache": approx is not None})
            assert r.ok, r.error
            out.append(Run(prompt, cluster, r.request_id, r.latency_s, worker.busy_s - before, r.outputs["image"][0], r.notes))
        cpu_s = time.process_time() - cpu0
    return out, cpu_s


def used(run: Run) -> dict | None:
    note = run.notes.get("approx_cache", {})
    return note if note.get("used") else None


def compare(runs: list[Run], reference: list[Run], steps: int, config: ApproxConfig, cpu_s: float, ref_cpu_s: float) -> dict:
    """What the cache changed against the uncached ``reference`` (the same requests; ``cpu_s``
    and ``ref_cpu_s``: the CPU seconds each stream took)."""
    by_id = {r.request: r for r in runs}
    hits = [(r, ref, used(r)) for r, ref in zip(runs, reference) if used(r)]
    same_cluster = [by_id[u["from_request"]].cluster == r.cluster for r, _, u in hits if u["from_request"] in by_id]
    skipped = [u["from_step"] for _, _, u in hits]
    saved_s = sum(ref.busy_s for ref in reference) - sum(r.busy_s for r in runs)
    per_k: dict[int, list] = {}
    for r, ref, u in hits:
        per_k.setdefault(u["from_step"], []).append((psnr(r.image, ref.image), ssim(r.image, ref.image), u["similarity"]))
    to_50 = {config.scaled(k, steps): k for k in config.save_at}  # a step of this schedule -> k of 50
    return {
        "requests": len(runs),
        "hit_rate": len(hits) / len(runs),
        "hits_on_a_paraphrase": sum(same_cluster) / len(same_cluster) if same_cluster else None,
        "mean_steps_skipped": sum(skipped) / len(runs),
        "mean_steps_skipped_per_hit": statistics.fmean(skipped) if skipped else 0.0,
        "cpu_s_saved_share": 1 - cpu_s / ref_cpu_s,
        "busy_s_saved": saved_s,
        "busy_s_saved_share": saved_s / sum(ref.busy_s for ref in reference),
        "latency_s": {"mean": statistics.fmean(r.latency_s for r in runs), "p95": percentile([r.latency_s for r in runs], 95)},
        "per_k": {
            f"{k} of {steps} (k={to_50.get(k, '?')} of 50)": {
                "hits": len(v),
                "psnr_db": statistics.fmean(p for p, _, _ in v),
                "ssim": statistics.fmean(s for _, s, _ in v),
                "similarity": statistics.fmean(x for _, _, x in v),
            }
            for k, v in sorted(per_k.items())
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200, help="requests in the stream (the prompt set has 325)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-k", type=int, default=25, help="requests per forced-k run (0: skip the per-k curve)")
    ap.add_argument("--seed", type=int, default=0, help="shuffles the prompt stream")
    ap.add_argument("--distinct-seeds", action="store_true", help="each request its own seed (default: all seed 0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    groups = clusters()
    requests = [(p, c) for c, group in enumerate(groups) for p in group]
    random.Random(args.seed).shuffle(requests)
    requests = requests[: args.prompts]
    config = ApproxConfig()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_models(Path(tmp))["sd15"]
        reference, ref_cpu_s = asyncio.run(stream(folder, requests, args, None))
        cached, cpu_s = asyncio.run(stream(folder, requests, args, config))
        forced = {}
        if args.per_k:
            few, few_cpu_s = asyncio.run(stream(folder, requests[: args.per_k], args, None))
        for k in config.save_at if args.per_k else ():
            runs, k_cpu_s = asyncio.run(stream(folder, requests[: args.per_k], args, ApproxConfig(thresholds=((-1.0, k),))))
            forced[k] = compare(runs, few, args.steps, config, k_cpu_s, few_cpu_s)
    uncached = {
        "latency_s": {"mean": statistics.fmean(r.latency_s for r in reference), "p95": percentile([r.latency_s for r in reference], 95)},
        "busy_s": sum(r.busy_s for r in reference),
        "cpu_s": ref_cpu_s,
    }
    with_cache = compare(cached, reference, args.steps, config, cpu_s, ref_cpu_s)
    curve = {
        f"k={k} of 50": {key: f[key] for key in ("hit_rate", "mean_steps_skipped_per_hit", "cpu_s_saved_share")}
        | next(iter(f["per_k"].values()), {})
        for k, f in forced.items()
    }
    summary = {
        "models": "tiny random-weight SD 1.5 (a check of the mechanism, not of image quality: their prompt similarities mean nothing)",
        "requests": len(requests),
        "steps": args.steps,
        "size": args.size,
        "thresholds": [list(t) for t in config.thresholds],
        "hit_rate": round(with_cache["hit_rate"], 3),
        "hits_on_a_paraphrase": with_cache["hits_on_a_paraphrase"],
        "mean_steps_skipped": round(with_cache["mean_steps_skipped"], 2),
        "cpu_s_saved_share": round(with_cache["cpu_s_saved_share"], 3),
        "busy_s_saved_share": round(with_cache["busy_s_saved_share"], 3),
        "latency_mean_s": {"uncached": round(uncached["latency_s"]["mean"], 4), "cached": round(with_cache["latency_s"]["mean"], 4)},
        "per_k": {k: {m: round(v, 3) if isinstance(v, float) else v for m, v in row.items()} for k, row in curve.items()},
    }
    report(
        "less_work",
        {
            "summary": summary,
            "stamp": stamp([PROMPTS], started),
            "detail": {"uncached": uncached, "cached": with_cache, "forced_k": forced, "config": vars(args)},
        },
    )


if __name__ == "__main__":
    main()
