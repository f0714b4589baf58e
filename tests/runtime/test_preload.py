"""Preloading (``Engine.preload``, ``serve --preload``): every worker holds the listed models'
components before a request asks, through the coordinator's own prefetch dispatches, so the
first requests load nothing; the engine's health says ``warming`` until it is done."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from legodiffusion.config import EngineConfig
from legodiffusion.models import store
from legodiffusion.runtime.engine import Engine
from legodiffusion.server.app import create_app
from legodiffusion.workflow.catalog import sd_txt2img
from tests.helpers import run_requests
from tests.server.live import serve, until

REQUEST = dict(prompt="a harbour", steps=2, seed=5, height=64, width=64)
WAIT_S = 60.0


@pytest.fixture(scope="module")
def models(tiny_models):
    return {"sd15": str(tiny_models["sd15"]), "cn": str(tiny_models["controlnet-sd15"]), "lora": str(tiny_models["lora-sd15-a"])}


def test_preloaded_workers_serve_their_first_requests_without_a_load(models, sd15):
    (alone,), _ = run_requests(sd15, [REQUEST])

    async def main():
        async with Engine(models, EngineConfig(workers=2, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            report = await engine.preload(["sd15", "cn"])
            drain = engine.drain_factor()  # what SLO admission assumes: a preload teaches it nothing
            loads = [w.stats().loads for w in engine.workers]
            again = await engine.preload(["sd15"])
            runs = [engine.submit("sd-txt2img", dict(REQUEST)) for _ in range(4)]
            results = [await r.future for r in runs]
            after = [w.stats().loads for w in engine.workers]
            return report, again, loads, after, results, engine.coordinator.stats.prefetches, engine.health(), drain

    report, again, loads, after, results, prefetches, health, drain = asyncio.run(main())
    assert drain == 1.0
    comps = {"sd15/config", "sd15/text_encoder", "sd15/denoiser", "sd15/vae", "cn/controlnet"}
    assert report.count("loaded") == 10 and len(report.rows) == 10, report.rows  # 5 components on each of 2 workers
    assert {w: set(h) for w, h in report.held.items()} == {0: comps, 1: comps}
    assert loads == [5, 5] and prefetches == 10
    assert again.count("resident") == 8 and again.count("loaded") == 0  # nothing loads twice
    assert all(r.ok for r in results) and after == loads  # the requests loaded nothing
    assert (results[0].outputs["image"] - alone.outputs["image"]).abs().max().item() <= 1e-4  # (batched with its copies)
    assert health["status"] == "ready" and health["preloaded"]["resident"] == 8  # (the last preload's report)


def test_what_cannot_be_preloaded_is_refused_before_anything_loads(models):
    async def main():
        async with Engine(models, EngineConfig(workers=1, device="cpu")) as engine:
            errors = []
            for names in (["sd15", "nope"], ["lora"]):
                with pytest.raises(ValueError) as exc:
                    await engine.preload(names)
                errors.append(str(exc.value))
            return errors, engine.workers[0].stats().loads, engine.health()["status"]

    (unknown, lora), loads, status = asyncio.run(main())
    assert "unknown model 'nope'" in unknown and "LoRA" in lora
    assert loads == 0 and status == "ready"


def held_loads(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Every load from disk waits (in its worker's thread) until ``release`` is set; ``entered``
    is set when the first one starts waiting."""
    entered, release = threading.Event(), threading.Event()
    load = store.load_component

    def held(*args, **kwargs):
        entered.set()
        release.wait(WAIT_S)
        return load(*args, **kwargs)

    monkeypatch.setattr(store, "load_component", held)
    return entered, release


def test_a_preload_is_refused_before_the_engine_starts_and_leaves_nothing_behind(models):
    engine = Engine(models, EngineConfig(workers=1, device="cpu"))
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(engine.preload(["sd15"]))
    assert not engine.coordinator.inflight and not engine.coordinator.workers[0].resident and engine.preloading == 0


def test_a_preload_under_a_policy_that_isolates_workflows_loads_each_workflows_copies(models):
    async def main():
        async with Engine(models, EngineConfig(workers=2, device="cpu", policy="bundle")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            report = await engine.preload(["sd15"])
            before = sum(engine.coordinator.stats.loads_by_worker.values())
            results = [await r.future for r in [engine.submit("sd-txt2img", dict(REQUEST, seed=i)) for i in range(3)]]
            return report, sum(engine.coordinator.stats.loads_by_worker.values()) - before, results

    report, loads, results = asyncio.run(main())
    assert report.count("loaded") == 8 and {r["scope"] for r in report.rows} == {"sd-txt2img"}
    assert all(r.ok for r in results) and loads == 0


def test_a_worker_lost_or_the_engine_stopping_during_a_preload_ends_it(models, monkeypatch):
    """Neither leaves the preload waiting: a lost worker's load is reported lost (its
    replacement gets the components still to come once it joins), a stop ends the preload with
    what is left stopped."""
    entered, release = held_loads(monkeypatch)

    async def lost():
        async with Engine(models, EngineConfig(workers=2, device="cpu")) as engine:
            task = asyncio.create_task(engine.preload(["sd15"]))
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, WAIT_S)
            engine.lose_worker(0)
            release.set()
            report = await asyncio.wait_for(task, WAIT_S)
            return report, engine.preloading, dict(engine._awaited)

    report, preloading, awaited = asyncio.run(lost())
    by = {(r["worker"], r["component"]): r["status"] for r in report.rows}
    assert by[(0, "config")] == "lost" and by[(1, "config")] == "loaded"
    assert not any(w == 0 for w, c in by if c != "config")  # a lost worker is not asked again
    # its replacement, once it has joined, gets the components still to come
    assert all(status == "loaded" for (w, _), status in by.items() if w == 2)
    assert preloading == 0 and not awaited

    entered.clear()
    release.clear()

    async def stopped():
        engine = await Engine(models, EngineConfig(workers=1, device="cpu", drain_s=0.2)).start()
        task = asyncio.create_task(engine.preload(["sd15"]))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, WAIT_S)
        await engine.stop()  # the held load never reaches a block boundary: the stop waits drain_s, no more
        report = await asyncio.wait_for(task, WAIT_S)
        release.set()
        return report, engine.preloading, dict(engine._awaited)

    report, preloading, awaited = asyncio.run(stopped())
    assert [r["status"] for r in report.rows] == ["stopped"] * 4, report.rows
    assert preloading == 0 and not awaited


def test_the_server_says_warming_until_its_preload_is_done(models, monkeypatch):
    """A load held at the disk: /readyz answers 503 warming (and requests are taken meanwhile),
    then 200 ready once the components are resident."""
    entered, release = held_loads(monkeypatch)
    app = create_app({"sd15": models["sd15"]}, EngineConfig(workers=1, device="cpu"), [sd_txt2img("sd15")], preload=["sd15"])
    with serve(app) as url:
        assert entered.wait(WAIT_S)
        warming = httpx.get(f"{url}/readyz")
        run = httpx.post(f"{url}/v1/runs", json={"workflow": "sd-txt2img", "inputs": REQUEST}).json()
        release.set()
        assert until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "the preload to finish", WAIT_S)
        ready = httpx.get(f"{url}/readyz").json()
        done = until(lambda: httpx.get(f"{url}/v1/runs/{run['id']}").json()["status"] == "succeeded", "the run", WAIT_S)
    assert warming.status_code == 503 and warming.json()["status"] == "warming"
    # the run took the worker's other call slot meanwhile: a component it loaded first counts as
    # resident, one whose load could not be sent then as busy (it loads on demand)
    pre = ready["preloaded"]
    assert pre["loaded"] >= 1 and pre["loaded"] + pre.get("resident", 0) + pre.get("busy", 0) == 4, pre
    assert done
