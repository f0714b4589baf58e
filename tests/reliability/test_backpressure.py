"""Backpressure that helps clients (issue 14, item 5): the queue is bounded in seconds of profiled
work; a refusal is decided before anything is queued (before anything is expanded when the queue
is full already) and says when to come back (``Retry-After``, from the queue); a request with a
deadline it cannot meet is told ``SLO_REJECTED`` rather than 429; the engine keeps its queued
work as it goes."""

from __future__ import annotations

import asyncio
import math
import re

import pytest
from fastapi.testclient import TestClient

from legodiffusion import Engine, EngineConfig, sd_txt2img
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.errors import ApiError
from legodiffusion.server.limits import Limits
from tests.server.live import in_flight

pytestmark = pytest.mark.reliability

HELD = {"prompt": "held", "steps": 200, "height": 128, "width": 128}  # minutes on CPU: cancelled at the end
SMALL = {"prompt": "x", "steps": 2, "height": 64, "width": 64}
MAX_QUEUE_S = 1.0


def _work_s(models, config, inputs) -> float:
    """A request's profiled work as the server's engine costs it (an engine that is not started)."""
    engine = Engine(models, config)
    engine.add_workflow(sd_txt2img("sd15", name="sd15-txt2img"))
    return engine.prepare("sd15-txt2img", inputs).cost.work_s


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    models = {"sd15": str(tiny_models["sd15"])}
    config = EngineConfig(workers=1, device="cpu", profile_dir=tmp_path_factory.mktemp("no-profiles"))
    app = create_app(models, config, builtin_workflows(models), limits=Limits(max_queue_s=MAX_QUEUE_S))
    with TestClient(app) as client:
        yield client, _work_s(models, config, HELD), _work_s(models, config, SMALL)


def _post(client, inputs, **body):
    return client.post("/v1/runs", json={"workflow": "sd15-txt2img", "inputs": inputs, **body})


def _full(r, work_ahead_s: float) -> int:
    """The 429 of a full queue: Retry-After in the header and the error, at least 1 s and no more
    than the work ahead needs to drain down to ``max_queue_s`` at the pace the engine measured
    the message names (the worker is saturated behind the held run, so its measured drain rate
    may have left the profile's)."""
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    after = int(r.headers["retry-after"])
    assert err["retryable"] is True and err["retry_after_s"] == after and "max_queue_s" in err["message"], err
    factor = float(re.search(r"draining at ([0-9.]+)x the profile", err["message"]).group(1))
    assert 0.25 <= factor <= 4.0, err  # DrainRate's clamp
    assert 1 <= after <= max(1, math.ceil(work_ahead_s / (factor - 0.005) - MAX_QUEUE_S)), (after, work_ahead_s, factor)  # as printed
    return after


def test_a_full_queue_refuses_with_retry_after_and_queues_nothing(server):
    client, held_s, small_s = server
    assert held_s > MAX_QUEUE_S + 1 and small_s < MAX_QUEUE_S  # the shapes this test relies on
    held = _post(client, HELD).json()
    try:
        assert held["status"] in ("queued", "running")  # an idle server takes it, whatever its size
        _full(_post(client, SMALL), held_s)
        r = client.post("/v1/images/generations", json={"model": "sd15-txt2img", "prompt": "x", "n": 2, "size": "64x64", "steps": 2})
        _full(r, held_s)
        # a full queue refuses before expanding: 10**12 steps would be a 400 (max_nodes) once expanded
        _full(_post(client, {**SMALL, "steps": 10**12}), held_s)
        assert in_flight(client.get("/metrics").text) == 1  # the held run, nothing of the refused requests
    finally:
        assert client.post(f"/v1/runs/{held['id']}/cancel").json()["status"] == "cancelled"
    # the queue drained: what was refused is admitted now
    assert _post(client, SMALL, wait=True).json()["status"] == "succeeded"


def test_a_deadline_that_cannot_be_met_is_slo_rejected_not_429(server):
    client, held_s, small_s = server
    # held with a deadline it meets only from the front of the queue (slack 0.2 s)
    held = _post(client, HELD, slo_s=held_s + 0.2).json()
    try:
        assert held["status"] in ("queued", "running"), held
        # 1 s of slack behind ~held_s of work ordered first: cannot make it, and is told so
        late = _post(client, SMALL, slo_s=small_s + 1.0)
        assert late.status_code == 200, late.text
        body = late.json()
        assert body["status"] == "rejected" and body["error"]["code"] == "SLO_REJECTED", body
        # a deadline it can meet does not get around the queue bound
        _full(_post(client, SMALL, slo_s=1000.0), held_s)
        assert in_flight(client.get("/metrics").text) == 1
    finally:
        client.post(f"/v1/runs/{held['id']}/cancel")
    assert _post(client, SMALL, wait=True, slo_s=1000.0).json()["status"] == "succeeded"


def test_the_count_cap_and_a_missing_worker_say_when_to_come_back():
    limits = Limits(max_queued=4, max_queue_s=10.0)
    with pytest.raises(ApiError) as exc:
        limits.check_room(2, 3, queued_work_s=6.0, own_ahead_s=0.0, workers=2)  # 3 in flight, 1 s each per worker
    assert exc.value.status == 429 and "max_queued=4" in exc.value.message and exc.value.retry_after_s == 1
    with pytest.raises(ApiError) as exc:
        limits.check_room(1, 0, queued_work_s=0.0, own_ahead_s=0.0, workers=0)
    assert exc.value.status == 503 and exc.value.retry_after_s == limits.retry_unavailable_s
    limits.check_room(1, 3, queued_work_s=20.0, own_ahead_s=0.0, workers=2)  # 10 s per worker: within max_queue_s
    with pytest.raises(ApiError) as exc:
        limits.check_room(2, 2, queued_work_s=20.0, own_ahead_s=5.0, workers=2)  # its first run queues ahead of its second
    assert exc.value.status == 429 and exc.value.retry_after_s == math.ceil(12.5 - 10.0)


def test_the_queue_bound_drains_at_the_measured_rate():
    """The wait behind the work in flight is the work over what the workers really complete per
    second while saturated (SLO admission's estimate), not over the profile's batch-1 rate."""
    limits = Limits(max_queue_s=10.0)
    limits.check_room(1, 3, queued_work_s=20.0, own_ahead_s=0.0, workers=2)  # at the profile: 10 s, within
    with pytest.raises(ApiError) as exc:  # half the profile's pace (loads, attaches): 20 s
        limits.check_room(1, 3, queued_work_s=20.0, own_ahead_s=0.0, workers=2, drain_factor=0.5)
    assert exc.value.status == 429 and exc.value.retry_after_s == 10 and "0.50x" in exc.value.message
    limits.check_room(1, 3, queued_work_s=40.0, own_ahead_s=0.0, workers=2, drain_factor=2.0)  # batching: twice
    limits = Limits(max_queued=4)
    with pytest.raises(ApiError) as exc:  # the count cap's Retry-After follows the same pace
        limits.check_room(2, 3, queued_work_s=6.0, own_ahead_s=0.0, workers=2, drain_factor=0.5)
    assert exc.value.retry_after_s == 2


def test_the_engine_keeps_its_queued_work_as_requests_come_and_go(sd15):
    async def main():
        async with Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            prepared = [engine.prepare("sd-txt2img", {**SMALL, "seed": i}) for i in range(3)]
            runs = [engine.submit_prepared(p) for p in prepared]
            queued = engine.queued_work_s()  # nothing has finished: completions arrive on this loop
            cancelled = engine.queued_work_s() - prepared[2].cost.work_s
            engine.cancel(runs[2].request_id)
            after_cancel = engine.queued_work_s()
            results = [await r.future for r in runs]
            return queued, sum(p.cost.work_s for p in prepared), after_cancel, cancelled, results, engine.queued_work_s()

    queued, total, after_cancel, expected_after_cancel, results, drained = asyncio.run(main())
    assert queued == pytest.approx(total)
    assert after_cancel == pytest.approx(expected_after_cancel)
    assert [r.status for r in results] == ["succeeded", "succeeded", "cancelled"]
    assert drained == 0.0
