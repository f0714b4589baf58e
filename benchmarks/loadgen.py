"""The load generator of benchmarks/overload.py: HTTP clients only (no torch), so it starts fast
in its own process and its work does not slow the server down."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import httpx

WORKFLOW = "sd15-txt2img"


async def one(client: httpx.AsyncClient, inputs: dict, slo_s: float | None) -> dict:
    body = {"workflow": WORKFLOW, "inputs": inputs, "wait": True, **({"slo_s": slo_s} if slo_s else {})}
    t0 = time.perf_counter()
    r = await client.post("/v1/runs", json=body)
    out = {"code": r.status_code, "latency_s": time.perf_counter() - t0, "deadline": slo_s is not None}
    if r.status_code == 200:
        out["status"] = r.json()["status"]
    else:
        out["retry_after"] = r.headers.get("retry-after")
    return out


async def calibrate(client: httpx.AsyncClient, inputs: dict, n: int) -> tuple[float, float]:
    """(solo latency, throughput in requests/s): one request alone, then ``n`` two at a time."""
    await one(client, inputs, None)  # warm: loads the components
    solo = statistics.median([(await one(client, {**inputs, "seed": i}, None))["latency_s"] for i in range(3)])
    t0 = time.perf_counter()
    for i in range(0, n, 2):
        await asyncio.gather(*(one(client, {**inputs, "seed": 100 + i + j}, None) for j in range(2)))
    return solo, n / (time.perf_counter() - t0)


async def level(client: httpx.AsyncClient, inputs: dict, rate: float, duration_s: float, slo_s: float, seed: int) -> dict:
    rng = random.Random(seed)
    answers: list[tuple[float, asyncio.Task]] = []
    health: list[float] = []
    start = time.perf_counter()

    async def probe() -> None:
        while time.perf_counter() - start < duration_s:
            t0 = time.perf_counter()
            await client.get("/healthz")
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.2)

    prober = asyncio.create_task(probe())
    at = 0.0
    i = 0
    while True:
        at += rng.expovariate(rate)
        if at >= duration_s:
            break
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        slo = slo_s if i % 2 == 0 else None
        answers.append((time.perf_counter() - start, asyncio.create_task(one(client, {**inputs, "seed": seed * 100_000 + i}, slo))))
        i += 1
    await prober
    done = [(t, await task) for t, task in answers]
    accepted = [a for _, a in done if a["code"] == 200 and a["status"] != "rejected"]
    met = [a for a in accepted if a["status"] == "succeeded" and a["latency_s"] <= slo_s]
    busy = [a for _, a in done if a["code"] in (429, 503)]
    slo_rejected = [a for _, a in done if a["code"] == 200 and a["status"] == "rejected"]
    refused_at = [t + a["latency_s"] for t, a in done if a in busy or a in slo_rejected]
    refusal_s = sorted(a["latency_s"] for a in busy + slo_rejected)
    return {
        "offered_rps": round(rate, 2),
        "sent": len(done),
        "accepted": len(accepted),
        "accepted_slo_attainment": round(len(met) / len(accepted), 3) if accepted else None,
        "accepted_by_class": {
            "deadline": sum(a["deadline"] for a in accepted),
            "plain": sum(not a["deadline"] for a in accepted),
        },
        "refused_429": sum(a["code"] == 429 for a in busy),
        "refused_503": sum(a["code"] == 503 for a in busy),
        "slo_rejected": len(slo_rejected),
        "other": sum(a["code"] not in (200, 429, 503) for _, a in done),
        "failed_or_cancelled": sum(a.get("status") in ("failed", "cancelled") for a in accepted),
        "time_to_first_refusal_s": round(min(refused_at), 2) if refused_at else None,
        "share_429_503_with_retry_after": round(sum(a["retry_after"] is not None for a in busy) / len(busy), 3) if busy else None,
        "retry_after_s_median": statistics.median(int(a["retry_after"]) for a in busy if a["retry_after"]) if busy else None,
        "refusal_answer_s_p50_p99": [round(refusal_s[len(refusal_s) // 2], 3), round(refusal_s[int(len(refusal_s) * 0.99)], 3)]
        if refusal_s
        else None,
        "accepted_latency_s_p50_p99": _p50_p99([a["latency_s"] for a in accepted]),
        "healthz_s_max": round(max(health), 3) if health else None,
    }


def _p50_p99(xs: list[float]) -> list[float] | None:
    xs = sorted(xs)
    return [round(xs[len(xs) // 2], 3), round(xs[int(len(xs) * 0.99)], 3)] if xs else None


def calibrate_job(url: str, inputs: dict, n: int) -> tuple[float, float]:
    """:func:`calibrate` in the load generator's process."""
    return asyncio.run(_with_client(url, lambda c: calibrate(c, inputs, n)))


def level_job(url: str, inputs: dict, rate: float, duration_s: float, slo_s: float, seed: int) -> dict:
    """:func:`level` in the load generator's process."""
    return asyncio.run(_with_client(url, lambda c: level(c, inputs, rate, duration_s, slo_s, seed)))


async def _with_client(url: str, job):
    pool = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=pool) as client:
        return await job(client)
