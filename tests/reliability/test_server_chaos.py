"""Chaos at the server (issue 14, item 10): a real server (uvicorn on a loopback port, local
backend; Ray in the slow soak) under load from concurrent clients of every API (native async runs
through the Python client, which comes back after a refusal's ``Retry-After``; native ``wait``;
OpenAI ``n=2``; ComfyUI ``batch_size=2``) while, at seeded moments (counted in dispatches, so a
seed names the same moments on any machine), a worker is lost, runs are cancelled over the API and
waiting clients close their connections. Every accepted run must end in a definite state; every
image that comes back must equal the one the same request makes undisturbed (within 1/255); the
engine and the data plane must drain; ``/healthz`` must answer throughout and ``/readyz`` say
ready at the end; no error may be logged; and the process's memory must return to its baseline
after warm-up (within the tolerances below)."""

from __future__ import annotations

import base64
import copy
import gc
import io
import logging
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from PIL import Image

from legodiffusion.client import ApiError, Client
from legodiffusion.config import EngineConfig, RayConfig
from legodiffusion.runtime.collector import pace_for_control_plane
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.limits import Limits
from legodiffusion.server.store import TERMINAL, Retention
from tests.server.live import in_flight, raw_post, serve, until
from tests.server.test_comfy import PROMPT as COMFY

pytestmark = pytest.mark.reliability

PROMPTS = ["a harbour", "a red fox", "a lighthouse", "a forest"]
STEPS, SIZE = 2, 64
KINDS = ("async", "wait", "openai", "comfy", "leave")
ANSWER_S = 120.0  # the bound on any one request's answer, and on the runs ending after the load
# Memory after the load against after warm-up. Live Python objects (torch-free, exact): measured
# from -0.9% to +0.5% (2 and 12 rounds, up to 45 workers lost).
HEAP_TOLERANCE = 0.01
# RSS is noisier: at the interpreter's default collector pace, +11% after 2 rounds, +18% to +26%
# after 12 (flattening from round 9 on). Most of it is glibc's malloc arenas (each replacement
# worker is a new thread, and threads get arenas of their own, up to 8 per core, then reused):
# with MALLOC_ARENA_MAX=2 the same soak grew +9.5%. At the server's pace (runtime/collector.py,
# which this test now runs at) the soak grew +28% to +37% in three runs (520-527 -> 673-718 MiB).
# What the rarer passes leave waiting is the in-process test clients' garbage (httpx/httpcore
# request and response cycles, none holding a tensor), not the server's. So the bound is loose,
# and also holds for the RSS read before any explicit collection; the object count is the exact
# check.
RSS_TOLERANCE = 0.5


def native(prompt: str, seed: int) -> dict:
    return {"prompt": prompt, "steps": STEPS, "height": SIZE, "width": SIZE, "seed": seed}


def comfy(prompt: str, seed: int) -> dict:
    p = copy.deepcopy(COMFY)
    p["6"]["inputs"]["text"], p["3"]["inputs"]["seed"], p["3"]["inputs"]["steps"] = prompt, seed, STEPS
    p["5"]["inputs"].update(width=SIZE, height=SIZE, batch_size=2)
    return p


def pixels(png_b64: str | bytes) -> np.ndarray:
    data = base64.b64decode(png_b64) if isinstance(png_b64, str) else png_b64
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


@dataclass
class Load:
    """One round's shared state between the clients, the chaos driver and the test."""

    url: str
    cancels: queue.Queue = field(default_factory=queue.Queue)  # chaos moments for the canceller
    leaves: queue.Queue = field(default_factory=queue.Queue)  # chaos moments for leaving clients
    known: list[str] = field(default_factory=list)  # run ids clients hold, for the canceller


def job(load: Load, kind: str, prompt: str, seed: int) -> list[tuple[tuple, str, np.ndarray | None]]:
    """Make one request of ``kind`` and follow it to its end: (image key, status, image) per run;
    status ``rejected`` for a 429/503 (which must carry ``Retry-After``)."""
    with httpx.Client(base_url=load.url, timeout=ANSWER_S) as http:
        if kind == "comfy":
            r = http.post("/prompt", json={"prompt": comfy(prompt, seed)})
            if refused(r):
                return [(("comfy", prompt, seed + i), "rejected", None) for i in range(2)]
            prompt_id = r.json()["prompt_id"]
            entry = until(lambda: http.get(f"/history/{prompt_id}").json().get(prompt_id), f"{prompt_id} ended", ANSWER_S)
            shown = next(iter(entry["outputs"].values()))["images"]  # only the runs that succeeded
            got = {int(im["filename"][-9:-4]): pixels(http.get("/view", params={"filename": im["filename"]}).content) for im in shown}
            return [(("comfy", prompt, seed + i), "succeeded" if i in got else "ended", got.get(i)) for i in range(2)]
        if kind == "openai":
            body = {"model": "sd15-txt2img", "prompt": prompt, "n": 2, "size": f"{SIZE}x{SIZE}", "steps": STEPS, "seed": seed}
            r = http.post("/v1/images/generations", json=body)
            if r.status_code in (422, 429) and "retry-after" not in r.headers:  # a run of it was cancelled or failed
                assert r.json()["error"]["message"], r.text
                return [(("native", prompt, seed + i), "ended", None) for i in range(2)]
            if refused(r):
                return [(("native", prompt, seed + i), "rejected", None) for i in range(2)]
            return [(("native", prompt, seed + i), "succeeded", pixels(d["b64_json"])) for i, d in enumerate(r.json()["data"])]
        if kind == "async":  # through the Python client, which comes back after a refusal's Retry-After
            client = Client(load.url, timeout_s=ANSWER_S)
            try:
                run = client.submit("sd15-txt2img", native(prompt, seed))
            except ApiError as exc:  # refused on each of its attempts
                assert exc.status in (429, 503) and exc.error["retry_after_s"] >= 1, exc.error
                return [(("native", prompt, seed), "rejected", None)]
            load.known.append(run["id"])
            run = until(lambda: (got := client.get(run["id"]))["status"] in TERMINAL and got, "the run", ANSWER_S)
        else:
            r = http.post("/v1/runs", json={"workflow": "sd15-txt2img", "inputs": native(prompt, seed), "wait": True})
            if refused(r):
                return [(("native", prompt, seed), "rejected", None)]
            run = r.json()
        if run["status"] == "failed":
            assert run["error"]["message"], run
        return [(("native", prompt, seed), run["status"], pixels(run["images"][0]) if run["status"] == "succeeded" else None)]


def refused(r: httpx.Response) -> bool:
    """A 429/503 refusal (with ``Retry-After``), or else a 200."""
    if r.status_code in (429, 503):
        assert int(r.headers["retry-after"]) >= 1, r.text
        return True
    assert r.status_code == 200, r.text
    return False


def leave(load: Load, prompt: str, seed: int) -> None:
    """``wait: true`` on a connection of its own, closed at the next chaos moment for leavers (or
    when the load is over); what became of its run is checked with every other run's, on the server."""
    with raw_post(load.url, "/v1/runs", {"workflow": "sd15-txt2img", "inputs": native(prompt, seed), "wait": True}):
        load.leaves.get(timeout=ANSWER_S * 2)


def canceller(load: Load, rng: random.Random) -> None:
    """At each cancel moment, cancel one of the runs clients hold, over the API; ends at None."""
    with httpx.Client(base_url=load.url, timeout=ANSWER_S) as http:
        while load.cancels.get(timeout=ANSWER_S * 2) is not None:
            if load.known:
                r = http.post(f"/v1/runs/{rng.choice(load.known)}/cancel")
                assert r.status_code == 200, r.text  # ended, or still ending past the cancel's answer limit


def health_poller(url: str, done: threading.Event, answered: list) -> None:
    """``/healthz`` throughout, each answer within 5 s."""
    with httpx.Client(base_url=url, timeout=5.0) as http:
        while not done.wait(0.05):
            answered.append(http.get("/healthz").status_code)


def round_of_load(url: str, engine, rng: random.Random, jobs: int, kill, kills: int) -> tuple[list, dict]:
    """``jobs`` requests of every kind, 6 clients at a time, with about one seeded chaos moment
    every few dispatches: a worker lost (``kill(dispatch)``, on the event loop, at most ``kills``
    times), a run cancelled, a waiting client gone. Returns every answered run's (key, status,
    image) and how many of each chaos action happened (and how many dispatches were sent)."""
    load = Load(url)
    todo = [(KINDS[i % len(KINDS)], rng.choice(PROMPTS), rng.randrange(3)) for i in range(jobs)]
    moments = {n: rng.choice(("kill", "cancel", "cancel", "leave")) for n in rng.sample(range(3, jobs * 5), jobs // 2)}
    did = {"kill": 0, "cancel": 0, "leave": 0}
    sent = [0]

    def on_sent(d) -> None:  # on the event loop, as each dispatch goes out
        sent[0] += 1
        action = moments.pop(sent[0], None)
        if action == "kill" and did["kill"] == kills:
            action = "cancel"
        if action == "kill":
            kill(d)
        elif action is not None:
            (load.cancels if action == "cancel" else load.leaves).put(sent[0])
        if action is not None:
            did[action] += 1

    engine.on_dispatch_sent = on_sent
    leavers = [(p, s) for k, p, s in todo if k == "leave"]
    with ThreadPoolExecutor(len(leavers) + 1) as aside, ThreadPoolExecutor(6) as clients:
        chaos_clients = [aside.submit(leave, load, p, s) for p, s in leavers]
        chaos_clients.append(aside.submit(canceller, load, random.Random(rng.random())))
        try:
            answered = list(clients.map(lambda t: job(load, *t), [t for t in todo if t[0] != "leave"]))
        finally:
            engine.on_dispatch_sent = None
            for _ in leavers:
                load.leaves.put("the load is over")  # those still waiting for a moment leave now
            load.cancels.put(None)
        for f in chaos_clients:
            f.result(timeout=ANSWER_S)  # what they asserted
    did["dispatches"] = sent[0]
    return [o for runs in answered for o in runs], did


def heap_objects() -> int:
    """Live Python objects the garbage collector tracks (torch's tensor storage is not among them)."""
    gc.collect()
    return len(gc.get_objects())


def worker_threads() -> int:
    return sum(t.name.startswith("worker-") for t in threading.enumerate())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def chaos(models: dict, rounds: int, jobs: int, seed: int, max_queue_s: float = 120.0, backend: str = "local", kills: int = 99) -> str:
    """Warm up (every request once, undisturbed: the reference images), then ``rounds`` rounds of
    ``jobs`` requests under chaos (at most ``kills`` workers lost a round), the queue bounded at
    ``max_queue_s`` (small: some requests are refused); asserts what the module says and returns
    a summary line. On Ray a worker actor is killed behind the engine's back, as a crash would.
    The collector runs at the pace ``legodiffusion serve`` sets, so garbage held in reference
    cycles waits as long as it does in a deployed server: the RSS after each round is read before
    any explicit collection, and bounded too."""
    before = pace_for_control_plane()
    try:
        return _chaos(models, rounds, jobs, seed, max_queue_s, backend, kills)
    finally:
        gc.set_threshold(*before)


def _chaos(models: dict, rounds: int, jobs: int, seed: int, max_queue_s: float, backend: str, kills: int) -> str:
    skew = [0.0]
    retention = Retention(clock=lambda: time.time() + skew[0])
    config = EngineConfig(workers=2, device="cpu")
    if backend == "ray":
        config = EngineConfig(
            workers=2, device="cpu", backend="ray", autoscale_interval_s=0, ray=RayConfig(tensor_transport="object_store")
        )
    app = create_app(models, config, builtin_workflows(models), limits=Limits(max_queue_s=120.0), retention=retention)
    t0 = time.perf_counter()
    with serve(app) as url:
        server = app.state.server
        engine = server.engine

        def kill(d) -> None:
            if backend == "ray":
                import ray

                ray.kill(engine.workers[d.worker].handle, no_restart=True)  # the engine is not told
            else:
                engine._loop.call_soon(engine.lose_worker, d.worker)

        def expire_records() -> None:  # every finished run past its TTL, and pruned
            skew[0] += retention.ttl_s + 1
            assert httpx.get(f"{url}/v1/runs/run-1").status_code == 404

        done, health = threading.Event(), []
        poller = threading.Thread(target=health_poller, args=(url, done, health))
        poller.start()
        reference: dict[tuple, np.ndarray] = {}
        with ThreadPoolExecutor(4) as pool:
            warm = [(k, p, s) for p in PROMPTS for k, seeds in (("async", range(4)), ("comfy", (0, 2))) for s in seeds]
            for key, status, image in (o for runs in pool.map(lambda t: job(Load(url), *t), warm) for o in runs):
                assert status == "succeeded", (key, status)
                reference[key] = image
        expire_records()
        server.limits.max_queue_s = max_queue_s
        heap0, rss0, threads0 = heap_objects(), rss_bytes(), threading.active_count()

        rng = random.Random(seed)
        statuses: dict[str, int] = {}
        did = {"kill": 0, "cancel": 0, "leave": 0, "dispatches": 0}
        rss = [rss0 // 2**20]  # MiB after warm-up, then after each round
        for _ in range(rounds):
            outcomes, round_did = round_of_load(url, engine, rng, jobs, kill, kills)
            for action, n in round_did.items():
                did[action] += n
            for key, status, image in outcomes:
                statuses[status] = statuses.get(status, 0) + 1
                if image is not None:
                    # within 1 of 255: a batch made up otherwise may round a float differently
                    assert np.abs(image - reference[key]).max() <= 1, f"{key}: the image differs from its undisturbed one"
            # every run admitted (answered or not) ends in a definite state, with a reason if it failed
            ended = until(lambda: all(r.status in TERMINAL for r in list(server.runs.records.values())), "every run to end", ANSWER_S)
            assert ended
            for rec in list(server.runs.records.values()):
                statuses["server " + rec.status] = statuses.get("server " + rec.status, 0) + 1
                if rec.status == "failed":
                    assert rec.result.error, rec.id
            try:
                until(
                    lambda: in_flight(httpx.get(f"{url}/metrics").text) == 0 and engine.plane.live_count() == 0,
                    "the engine and the data plane to drain",
                    ANSWER_S,
                )
            except AssertionError as exc:  # once seen in a full-suite run, never alone: say what was left
                left = {rid: (live.status, live.done, sorted(live.pending)) for rid, live in engine.coordinator.requests.items()}
                raise AssertionError(
                    f"{exc}: requests {left}, sent {sorted(engine._sent)}, plane ids {sorted(engine.plane._values)}"
                ) from None
            assert not engine.coordinator.requests and not engine._sent
            if backend == "local":  # a lost worker's thread ends too (at its call's next boundary)
                until(lambda: worker_threads() == engine.live_workers(), "only the live workers' threads left", ANSWER_S)
            assert engine.coordinator.stats.violations == 0
            expire_records()
            rss.append(rss_bytes() // 2**20)
        assert did["kill"] and did["cancel"] and did["leave"], f"the seed gave no moment for some chaos: {did}"
        assert statuses.get("succeeded", 0) > 0, statuses
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        heap1, rss1, threads1 = heap_objects(), rss_bytes(), threading.active_count()
        done.set()
        poller.join()
        assert health and set(health) == {200}, "/healthz did not answer 200 throughout"
        assert heap1 <= heap0 * (1 + HEAP_TOLERANCE), f"Python objects {heap0} after warm-up, {heap1} after the load"
        assert rss1 <= rss0 * (1 + RSS_TOLERANCE), f"RSS {rss0 >> 20} MiB after warm-up, {rss1 >> 20} MiB after the load"
        assert max(rss) <= (rss0 >> 20) * (1 + RSS_TOLERANCE), f"RSS by round {rss} MiB (before any explicit collection)"
    return (
        f"{rounds} rounds of {jobs} requests in {time.perf_counter() - t0:.0f} s: chaos {did}, runs {dict(sorted(statuses.items()))}; "
        f"objects {heap0} -> {heap1} ({(heap1 - heap0) / heap0:+.2%}), RSS by round {rss} MiB; threads {threads0} -> {threads1}; "
        f"{engine.workers_lost} workers lost, {len(health)} health checks"
    )


@pytest.fixture(scope="module")
def models(tiny_models):
    return {"sd15": str(tiny_models["sd15"])}


def no_errors_logged(caplog) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def test_server_chaos_quick(models, caplog):
    print(chaos(models, rounds=2, jobs=20, seed=14))
    no_errors_logged(caplog)


@pytest.mark.slow
def test_server_chaos_soak(models, caplog):
    print(chaos(models, rounds=12, jobs=30, seed=1414, max_queue_s=0.2))
    no_errors_logged(caplog)


@pytest.mark.slow
@pytest.mark.ray
def test_server_chaos_soak_on_ray(models, ray_cluster, caplog):
    print(chaos(models, rounds=4, jobs=20, seed=141414, backend="ray", kills=2))
    no_errors_logged(caplog)
