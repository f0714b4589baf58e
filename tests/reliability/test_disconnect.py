"""Abort on disconnect, against a real server: a client that goes away from a request waiting for
its runs (native ``wait``, OpenAI images) has them cancelled, unless ``cancel_on_disconnect`` is
off; a Server-Sent Events subscriber leaving never cancels the run it follows."""

import gc
import logging

import httpx
import pytest

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from tests.server.live import in_flight, raw_post, serve, until

pytestmark = pytest.mark.reliability
LONG = {"prompt": "a boat", "steps": 200, "height": 128, "width": 128}  # seconds of work on the tiny model


def status(url: str, run_id: str) -> str | None:
    r = httpx.get(f"{url}/v1/runs/{run_id}")
    return r.json()["status"] if r.status_code == 200 else None


def requests_in_flight(url: str) -> float:
    return in_flight(httpx.get(f"{url}/metrics").text)


def post_and_leave(url: str, path: str, body: dict, run_ids: list[str]) -> None:
    """POST ``body`` on a raw connection, wait until the server holds its runs, then close it."""
    with raw_post(url, path, body):
        for run_id in run_ids:
            until(lambda run_id=run_id: status(url, run_id) in ("queued", "running"), f"{run_id} in flight")


@pytest.fixture(scope="module")
def models(tiny_models):
    return {"sd15": str(tiny_models["sd15"])}


@pytest.fixture(scope="module")
def server(models):
    with serve(create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models))) as url:
        yield url


def test_a_waiting_run_whose_client_leaves_is_cancelled(server, caplog):
    post_and_leave(server, "/v1/runs", {"workflow": "sd15-txt2img", "inputs": LONG, "wait": True}, ["run-1"])
    assert until(lambda: status(server, "run-1") in ("cancelled", "succeeded") and status(server, "run-1"), "run-1 ended") == "cancelled"
    until(lambda: requests_in_flight(server) == 0, "the engine's queue to empty")
    gc.collect()  # an exception never retrieved is logged when its future goes
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # a client leaving is no error


def test_openai_images_whose_client_leaves_are_all_cancelled(server):
    body = {"model": "sd15-txt2img", "prompt": "a fox", "n": 2, "size": "128x128", "steps": 200}
    post_and_leave(server, "/v1/images/generations", body, ["run-2", "run-3"])
    for run_id in ("run-2", "run-3"):
        until(lambda run_id=run_id: status(server, run_id) == "cancelled", f"{run_id} cancelled")
    until(lambda: requests_in_flight(server) == 0, "the engine's queue to empty")


def test_an_sse_subscriber_leaving_does_not_cancel_the_run(server):
    started = httpx.post(f"{server}/v1/runs", json={"workflow": "sd15-txt2img", "inputs": {**LONG, "steps": 20}}).json()
    with httpx.stream("GET", f"{server}/v1/runs/{started['id']}/events", timeout=30) as events:
        next(events.iter_lines())  # the first progress event, then the subscriber leaves
    assert (
        until(
            lambda: status(server, started["id"]) in ("succeeded", "cancelled", "failed") and status(server, started["id"]),
            "the run to end",
        )
        == "succeeded"
    )


def test_with_cancel_on_disconnect_off_the_run_goes_on(models):
    app = create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models), cancel_on_disconnect=False)
    with serve(app) as url:
        post_and_leave(url, "/v1/runs", {"workflow": "sd15-txt2img", "inputs": {**LONG, "steps": 20}, "wait": True}, ["run-1"])
        assert until(lambda: status(url, "run-1") in ("cancelled", "succeeded") and status(url, "run-1"), "run-1 ended") == "succeeded"
