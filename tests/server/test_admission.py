"""A request of several runs (OpenAI ``n``, ComfyUI ``batch_size``) is admitted or refused as one:
a refusal leaves nothing queued or running, and the run count is bounded by ``max_n``."""

import copy

import pytest
from fastapi.testclient import TestClient

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.limits import Limits
from tests.server.test_comfy import PROMPT

SMALL = {"steps": 2, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def client(tiny_models):
    models = {"sd15": str(tiny_models["sd15"])}
    app = create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models), limits=Limits(max_queued=3, max_n=4))
    with TestClient(app) as c:
        yield c


def _metric(client, name: str) -> float:
    """The sum of a metric's samples in /metrics."""
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{") or line.startswith(name + " "))


def _images(client, n, **extra):
    body = {"model": "sd15-txt2img", "prompt": "a fox", "n": n, "size": "64x64", "steps": 2, **extra}
    return client.post("/v1/images/generations", json=body)


def _comfy(client, batch_size):
    prompt = copy.deepcopy(PROMPT)
    prompt["5"]["inputs"]["batch_size"] = batch_size
    prompt["3"]["inputs"]["steps"] = 2
    return client.post("/prompt", json={"prompt": prompt})


def _assert_nothing_admitted(client, finished_before: float) -> None:
    """No run of the refused request is in flight now, and none ever finishes: a run submitted
    after it (FIFO behind anything that was queued) is the only one to finish."""
    assert _metric(client, "legodiffusion_requests_in_flight") == 0
    after = client.post("/v1/runs", json={"workflow": "sd15-txt2img", "inputs": {"prompt": "x", **SMALL}, "wait": True}).json()
    assert after["status"] == "succeeded"
    assert _metric(client, "legodiffusion_requests_total") - finished_before == 1


def test_openai_n_beyond_the_room_in_the_queue_is_refused_whole(client):
    before = _metric(client, "legodiffusion_requests_total")
    r = _images(client, 4)  # max_queued=3
    assert r.status_code == 429, r.text
    _assert_nothing_admitted(client, before)
    err = r.json()["error"]
    assert err["retryable"] is True and "max_queued=3" in err["message"] and "4 runs" in err["message"]


def test_comfy_batch_beyond_the_room_in_the_queue_is_refused_whole(client):
    before = _metric(client, "legodiffusion_requests_total")
    r = _comfy(client, 4)
    assert r.status_code == 429, r.text
    _assert_nothing_admitted(client, before)
    assert r.json()["error"]["retryable"] is True and "max_queued=3" in r.json()["error"]["message"]


def test_the_room_counts_the_runs_already_in_flight(client):
    held = [
        client.post("/v1/runs", json={"workflow": "sd15-txt2img", "inputs": {"prompt": "x", "steps": 200, "height": 128, "width": 128}})
        for _ in range(2)
    ]
    try:
        r = _images(client, 2)  # 2 in flight + 2 > max_queued=3
        assert r.status_code == 429, r.text
        assert _metric(client, "legodiffusion_requests_in_flight") == 2  # the held runs, nothing of the refused request
        r = _images(client, 1)
        assert r.status_code == 200 and len(r.json()["data"]) == 1
    finally:
        for h in held:
            client.post(f"/v1/runs/{h.json()['id']}/cancel")


@pytest.mark.parametrize("n,message", [(0, "n"), (-5, "n"), (5, "max_n=4")])
def test_openai_n_out_of_range_is_a_400(client, n, message):
    before = _metric(client, "legodiffusion_requests_total")
    r = _images(client, n)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["path"] == "n" and message in err["message"] and err["retryable"] is False
    _assert_nothing_admitted(client, before)


@pytest.mark.parametrize("batch_size,message", [(0, "batch_size"), (-5, "batch_size"), (1001, "max_n=4")])
def test_comfy_batch_size_out_of_range_is_a_400_naming_the_node(client, batch_size, message):
    before = _metric(client, "legodiffusion_requests_total")
    r = _comfy(client, batch_size)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["path"] == "prompt.5.inputs.batch_size" and message in err["message"] and err["retryable"] is False
    assert r.json()["node_errors"]["5"]["class_type"] == "EmptyLatentImage"
    _assert_nothing_admitted(client, before)


def test_a_batch_within_the_limits_still_runs_every_item(client):
    r = _images(client, 3, seed=7)
    assert r.status_code == 200 and len(r.json()["data"]) == 3


def test_a_run_the_engine_refuses_takes_the_runs_before_it_back(client):
    """The runs of a request differ only in seed (seed + i), so with the largest seed the last run
    is the one an engine that checks a seed's range refuses: the runs already submitted are
    cancelled and nothing of the request is recorded or finishes."""
    before = _metric(client, "legodiffusion_requests_total")
    r = _images(client, 2, seed=2**64 - 1)
    if r.status_code != 400:
        pytest.skip(f"this engine does not check a seed's range at submission ({r.status_code})")
    assert r.json()["error"]["path"] == "inputs.seed"
    _assert_nothing_admitted(client, before)
