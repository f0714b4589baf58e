"""The Python client honours ``Retry-After`` (issue 14, item 5 from the client's side), against a
real server whose queue is full: it waits what the server says and tries again, up to its
attempts and never past its deadline, then raises the server's error."""

from __future__ import annotations

import httpx
import pytest

from legodiffusion import Client
from legodiffusion.client import ApiError
from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.limits import Limits
from tests.reliability.test_backpressure import HELD, SMALL
from tests.server.live import serve

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    models = {"sd15": str(tiny_models["sd15"])}
    config = EngineConfig(workers=1, device="cpu", profile_dir=tmp_path_factory.mktemp("no-profiles"))
    with serve(create_app(models, config, builtin_workflows(models), limits=Limits(max_queue_s=1.0))) as url:
        yield url


@pytest.fixture
def held(server):
    """A run of minutes that fills the queue; cancelled at the end if the test has not."""
    run = httpx.post(f"{server}/v1/runs", json={"workflow": "sd15-txt2img", "inputs": HELD}).json()
    assert run["status"] in ("queued", "running"), run
    yield run["id"]
    httpx.post(f"{server}/v1/runs/{run['id']}/cancel")


def test_a_refused_submit_is_retried_after_retry_after_and_admitted(server, held):
    waits = []

    def sleep(s: float) -> None:  # the queue drains while the client waits
        waits.append(s)
        assert httpx.post(f"{server}/v1/runs/{held}/cancel").json()["status"] == "cancelled"

    run = Client(server, sleep=sleep).submit("sd15-txt2img", SMALL)
    assert len(waits) == 1 and waits[0] >= 1  # the server's Retry-After, in seconds
    assert run["status"] in ("queued", "running", "succeeded"), run


def test_a_queue_still_full_after_the_attempts_raises_the_servers_error(server, held):
    waits = []
    with pytest.raises(ApiError) as exc:
        Client(server, attempts=3, sleep=waits.append).submit("sd15-txt2img", SMALL)
    assert len(waits) == 2  # three tries, two waits between them
    err = exc.value.error
    assert exc.value.status == 429 and err["code"] == "limit_exceeded" and err["retryable"] and err["retry_after_s"] == waits[-1], err


def test_a_wait_past_the_deadline_is_not_started(server, held):
    waits = []
    with pytest.raises(ApiError) as exc:
        Client(server, retry_within_s=0.5, sleep=waits.append).submit("sd15-txt2img", SMALL)
    assert waits == [] and exc.value.status == 429 and exc.value.error["retry_after_s"] >= 1


def test_other_errors_are_not_retried(server):
    waits = []
    with pytest.raises(ApiError) as exc:
        Client(server, sleep=waits.append).submit("no-such-workflow", SMALL)
    assert waits == [] and exc.value.status == 404 and exc.value.error["code"] == "unknown_workflow"
