"""Stoppable model calls (issue 14, defect 1): a cancelled request's call in progress stops at its
next block boundary; a call past its timeout loses its worker and its request re-runs elsewhere
(or fails on a second timeout); the watchdog fails a request nothing works on; health and metrics
show busy and stuck workers; ``Engine.stop`` honours its drain limit."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from legodiffusion import Engine, EngineConfig, sd_txt2img
from legodiffusion.ops import BUILTIN_OPERATORS, OperatorRegistry
from legodiffusion.ops.vae import VaeDecode
from legodiffusion.runtime.stopping import STOPPED, CallStopped, StopFlags
from tests.server.live import until

pytestmark = pytest.mark.reliability

#: one denoiser call at this size runs for seconds on the tiny SD1.5 (1024 x 1024: ~24 s)
LONG = {"prompt": "a lighthouse", "steps": 1, "height": 768, "width": 768, "seed": 1}
SMALL = {"prompt": "a harbour", "negative_prompt": "fog", "steps": 4, "seed": 3, "height": 64, "width": 64}
WAIT_S = 120  # generous bounds on waits that end far sooner unless something is broken
INSIDE_S = 1.0  # how far into a LONG call a cancel lands


class Recorder:
    """Dispatches as they are sent and completions as they arrive, with events to await."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list = []
        self._more = asyncio.Event()
        self.done: dict[int, tuple] = {}
        self._done_events: dict[int, asyncio.Event] = {}
        engine.on_dispatch_sent = self._sent
        engine.on_dispatch_done = self._done

    def _sent(self, d) -> None:
        self.sent.append(d)
        self._more.set()

    def _done(self, d, c) -> None:
        self.done[d.id] = (d, c)
        self._done_events.setdefault(d.id, asyncio.Event()).set()

    async def wait_sent(self, op: str, where=lambda d: True):
        """The first dispatch of ``op`` sent that satisfies ``where``."""
        while True:
            found = next((d for d in self.sent if d.op == op and where(d)), None)
            if found is not None:
                return found
            self._more.clear()
            await asyncio.wait_for(self._more.wait(), WAIT_S)

    async def wait_done(self, dispatch_id: int):
        await asyncio.wait_for(self._done_events.setdefault(dispatch_id, asyncio.Event()).wait(), WAIT_S)
        return self.done[dispatch_id]


def test_hooks_stop_a_forward_between_blocks():
    """The mechanism on a plain module: asked to stop from another thread while block 1 runs,
    the forward raises before block 2; a dispatch asked before it starts does not start."""
    entered, release = threading.Event(), threading.Event()

    class Block(torch.nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i, self.lin = i, torch.nn.Linear(4, 4)

        def forward(self, x):
            if self.i == 1:
                entered.set()
                release.wait(WAIT_S)
            return self.lin(x)

    net = torch.nn.Sequential()
    net.blocks = torch.nn.ModuleList([Block(i) for i in range(4)])
    net.forward = lambda x: [x := b(x) for b in net.blocks][-1]
    flags = StopFlags()
    flags.guard(net)
    out: dict = {}

    def call():
        flags.begin(7)
        try:
            out["y"] = net.forward(torch.zeros(1, 4))
        except CallStopped as exc:
            out["stopped"] = str(exc)
        finally:
            flags.end()

    t = threading.Thread(target=call)
    t.start()
    assert entered.wait(WAIT_S)
    flags.ask(7)
    release.set()
    t.join(WAIT_S)
    assert out == {"stopped": STOPPED}
    flags.ask(9)
    assert flags.begin(8) and not flags.stopping  # another dispatch runs on
    flags.end()
    assert not flags.begin(9)  # asked before it started: skipped
    flags.end()


async def long_call_sent(engine: Engine):
    """Warm ``engine`` (its loads done by a small run) and submit LONG: the recorder, the run and
    its first denoiser dispatch, sent (a call of many seconds)."""
    engine.add_workflow(sd_txt2img("sd15"))
    assert (await engine.run("sd-txt2img", SMALL)).ok  # warm: the call below computes at once
    rec = Recorder(engine)
    run = engine.submit("sd-txt2img", LONG)
    return rec, run, await rec.wait_sent("denoise")


def test_cancel_stops_a_long_call_and_the_worker_takes_the_next_request(sd15):
    async def main():
        async with Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu")) as engine:
            rec, run, d = await long_call_sent(engine)
            busy = engine.health()["workers"][0]
            assert busy["call"]["op"] == "denoise" and not busy["call"]["stuck"]
            await asyncio.sleep(INSIDE_S)  # land inside the call, which runs for many seconds
            engine.cancel(run.request_id)
            assert (await run.future).status == "cancelled"
            _, c = await rec.wait_done(d.id)
            assert [r.error for r in c.results] == [STOPPED] * len(d.items)  # stopped, not run to the end
            assert c.end_s - c.start_s >= INSIDE_S  # in the middle, not before it started
            nxt = await asyncio.wait_for(engine.run("sd-txt2img", SMALL), WAIT_S)
            assert nxt.ok, nxt.error
            assert engine.health()["busy"] == 0 and engine.plane.live_count() == 0

    asyncio.run(main())


def test_a_batch_mate_not_cancelled_runs_on_with_the_same_image(sd15):
    async def alone():
        async with Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            return await engine.run("sd-txt2img", SMALL)

    async def together():
        # one slot: the two requests' steps queue together and share denoiser calls
        config = EngineConfig(workers=1, device="cpu", slots_per_worker=1, latency_batch={"denoise": 8})
        async with Engine({"sd15": sd15}, config) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            rec = Recorder(engine)
            keep = engine.submit("sd-txt2img", SMALL)
            drop = engine.submit("sd-txt2img", {**SMALL, "seed": 4})
            d = await rec.wait_sent("denoise", lambda d: len({it.request_id for it in d.items}) == 2)
            engine.cancel(drop.request_id)
            _, c = await rec.wait_done(d.id)
            result = await keep.future
            kept = [r for it, r in zip(d.items, c.results) if it.request_id == keep.request_id]
            return result, kept, c, (await drop.future).status

    base = asyncio.run(alone())
    result, kept, c, dropped = asyncio.run(together())
    assert dropped == "cancelled"
    assert kept and all(r.error is None for r in kept)  # the shared call ran on for the one still wanted
    assert STOPPED not in [r.error for r in c.results]
    assert result.ok, result.error
    assert np.abs(result.outputs["image"].numpy() - base.outputs["image"].numpy()).max() <= 1e-5


class HangOnce(VaeDecode):
    """A VAE decode whose first call hangs, as a wedged device would (it never checks a flag),
    until the test releases it."""

    armed = threading.Event()
    release = threading.Event()
    hung = threading.Event()

    def run(self, model, mode, items):
        if HangOnce.armed.is_set() and not HangOnce.hung.is_set():
            HangOnce.hung.set()
            HangOnce.release.wait(WAIT_S)
        return super().run(model, mode, items)


def hanging_registry() -> OperatorRegistry:
    registry = OperatorRegistry()
    for op in BUILTIN_OPERATORS:
        registry.add(HangOnce if op is VaeDecode else op)
    for event in (HangOnce.armed, HangOnce.release, HangOnce.hung):
        event.clear()
    return registry


def test_a_timed_out_call_loses_its_worker_and_the_request_reruns_elsewhere(sd15):
    async def main(registry, timeout):
        config = EngineConfig(workers=2, device="cpu", supervise_interval_s=0.05, drain_s=2.0)
        async with Engine({"sd15": sd15}, config, registry) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            await engine.run("sd-txt2img", SMALL)  # warm: loads are not part of what times out
            if timeout:
                config.call_timeout_floor_s, config.call_timeout_factor = 3.0, 1.0  # far above a 64 x 64 decode
                HangOnce.armed.set()
            rec = Recorder(engine)
            result = await asyncio.wait_for(engine.run("sd-txt2img", SMALL), WAIT_S)
            HangOnce.release.set()
            return result, engine, rec

    base, *_ = asyncio.run(main(None, False))
    result, engine, rec = asyncio.run(main(hanging_registry(), True))
    assert HangOnce.hung.is_set()
    assert result.ok, result.error
    assert np.abs(result.outputs["image"].numpy() - base.outputs["image"].numpy()).max() <= 1e-5
    assert engine.workers_lost == 1 and engine.supervisor.timeouts == 1
    assert engine.coordinator.stats.recoveries == 1
    assert not any(getattr(w, "thread_alive", False) for w in engine.workers)


def test_a_node_that_times_out_twice_fails_its_request_with_a_reason(sd15):
    async def main():
        config = EngineConfig(workers=2, device="cpu", supervise_interval_s=0.05)
        async with Engine({"sd15": sd15}, config) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            await engine.run("sd-txt2img", SMALL)
            config.call_timeout_floor_s, config.call_timeout_factor = 1.0, 1.0  # a 768 x 768 denoiser call runs longer
            result = await asyncio.wait_for(engine.run("sd-txt2img", LONG), WAIT_S)
            after = await asyncio.wait_for(engine.run("sd-txt2img", SMALL), WAIT_S)  # the server still serves
            return result, after, engine

    result, after, engine = asyncio.run(main())
    assert result.status == "failed" and "timed out twice" in result.error, result.error
    assert after.ok, after.error
    assert engine.workers_lost >= 1  # each branch (cond, uncond) lost a worker the first time


def test_the_watchdog_fails_a_request_nothing_works_on(sd15, monkeypatch):
    """A request whose bookkeeping silently loses an event (here: its decode never becomes
    ready; an exception there is caught and fails the request at once) is left with nothing
    queued or running: the watchdog fails it with a reason, and the engine goes on."""

    async def main():
        config = EngineConfig(workers=1, device="cpu", supervise_interval_s=0.05, stall_floor_s=0.5)
        async with Engine({"sd15": sd15}, config) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            coord = engine.coordinator
            real = coord._make_ready

            def broken(live, node):
                if live.req.template.nodes[node].op == "vae_decode":
                    return None  # the event is lost: nothing raises, nothing becomes ready
                return real(live, node)

            monkeypatch.setattr(coord, "_make_ready", broken)
            result = await asyncio.wait_for(engine.run("sd-txt2img", SMALL), WAIT_S)
            monkeypatch.setattr(coord, "_make_ready", real)
            return result, await asyncio.wait_for(engine.run("sd-txt2img", SMALL), WAIT_S)

    stalled, after = asyncio.run(main())
    assert stalled.status == "failed" and stalled.error.startswith("stalled: no progress for"), stalled.error
    assert after.ok


def test_stop_returns_within_the_drain_limit_while_a_call_ignores_its_flag(sd15):
    async def main():
        config = EngineConfig(workers=1, device="cpu", drain_s=1.0)
        engine = Engine({"sd15": sd15}, config, hanging_registry())
        HangOnce.armed.set()
        await engine.start()
        engine.add_workflow(sd_txt2img("sd15"))
        run = engine.submit("sd-txt2img", SMALL)
        await asyncio.get_running_loop().run_in_executor(None, HangOnce.hung.wait, WAIT_S)
        t0 = time.monotonic()
        await engine.stop()
        took = time.monotonic() - t0
        HangOnce.release.set()
        engine.workers[0].stop(WAIT_S)  # the wedged thread ends once released
        return took, run.future.result().status

    took, status = asyncio.run(main())
    assert status == "cancelled"
    assert took < 1.0 + Engine.STOP_MARGIN_S + 1.0  # drain limit, join margin, slack for a busy machine


def test_stop_with_a_long_call_in_flight_stops_it_and_joins_every_thread(sd15):
    """Cancelled by stop, the call ends at a block boundary; a lost worker's thread (killed in
    the middle of a call) does not outlive the engine either (before: with the only worker lost,
    stop had nothing to wait for and returned while the thread computed on, into the process's
    exit)."""

    async def main():
        async with Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu")) as engine:
            _, run, d = await long_call_sent(engine)
            engine.lose_worker(d.worker)  # its thread computes on until a boundary
        return engine, run.future.result().status

    engine, status = asyncio.run(main())
    assert status == "cancelled"
    assert not any(t.name.startswith("worker-") for t in threading.enumerate())
    assert engine.plane.live_count() == 0


def test_readyz_and_metrics_show_a_busy_then_a_stuck_worker(sd15):
    from fastapi.testclient import TestClient

    from legodiffusion.server.app import create_app

    config = EngineConfig(workers=1, device="cpu", supervise_interval_s=0)  # no timeouts acted on: the worker stays stuck
    app = create_app({"sd15": str(sd15)}, config, [sd_txt2img("sd15")])
    with TestClient(app) as client:
        run_id = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": LONG}).json()["id"]

        def denoising():
            body = client.get("/readyz").json()
            return body if body["workers"][0].get("call", {}).get("op") == "denoise" else None

        busy = until(denoising, "the denoiser call in /readyz", WAIT_S)
        assert client.get("/readyz").status_code == 200 and busy["status"] == "ready" and busy["busy"] == 1
        text = client.get("/metrics").text
        assert "legodiffusion_workers_busy 1.0" in text and "legodiffusion_dispatches_in_flight 1.0" in text
        config.call_timeout_floor_s, config.call_timeout_factor = 0.01, 0.01  # the call is now far past its limit
        stuck = client.get("/readyz")
        assert stuck.status_code == 503
        body = stuck.json()
        assert body["status"] == "degraded" and body["stuck"] == 1 and body["workers"][0]["call"]["stuck"]
        assert "legodiffusion_workers_stuck 1.0" in client.get("/metrics").text
        client.post(f"/v1/runs/{run_id}/cancel")
        until(lambda: client.get("/readyz").json()["busy"] == 0, "the worker free again", WAIT_S)
        assert client.get("/readyz").json()["status"] == "ready"


@pytest.mark.slow
def test_sigterm_ends_the_server_within_its_drain_limit_during_a_long_call(sd15, tmp_path):
    """The probe of defect 1: SIGTERM during a call that runs for tens of seconds (1024 x 1024)
    used to hang until the call ended; the server now exits within ``--drain-s`` plus a margin."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "models"
    root.mkdir()
    (root / "sd15").symlink_to(sd15)
    cmd = [sys.executable, "-c", "from legodiffusion.cli.main import app; app()", "serve", "--model-root", str(root)]
    cmd += ["--port", str(port), "--device", "cpu", "--workers", "1", "--drain-s", "2"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return httpx.get(url + "/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        until(ready, "the server ready", WAIT_S)
        r = httpx.post(url + "/v1/runs", json={"workflow": "sd15-txt2img", "inputs": {**LONG, "height": 1024, "width": 1024}})
        assert r.status_code == 200, r.text
        until(lambda: httpx.get(url + "/readyz").json()["workers"][0].get("call", {}).get("op") == "denoise", "the long call", WAIT_S)
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=WAIT_S)
        took = time.monotonic() - t0
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()  # the engine stopped cleanly
    assert took < 2.0 + Engine.STOP_MARGIN_S + 3.0  # drain, join margin, slack for uvicorn's own shutdown
