"""Hostile request bodies: non-boolean values for boolean fields, and a chunked body (no
Content-Length) larger than ``max_body_bytes``, against a real server."""

import http.client
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.limits import Limits
from legodiffusion.workflow.catalog import sd_txt2img
from tests.server.live import serve

pytestmark = pytest.mark.reliability
MAX_BODY = 4096


def make_app(tiny_models):
    return create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=1, device="cpu"),
        [sd_txt2img("sd15")],
        limits=Limits(max_body_bytes=MAX_BODY),
    )


@pytest.fixture(scope="module")
def client(tiny_models):
    with TestClient(make_app(tiny_models)) as c:
        yield c


@pytest.mark.parametrize("wait", ["yes", "true", 1, "1", [True], {}])
def test_a_non_boolean_wait_is_a_400(client, wait):
    r = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": "a fox", "steps": 1}, "wait": wait})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request" and r.json()["error"]["path"] == "wait"


def _chunked_post(url: str, path: str, chunks) -> tuple[int, dict, int]:
    """POST ``chunks`` with Transfer-Encoding: chunked; returns the status, the JSON body and how
    many chunks were sent before the server answered."""
    import json

    host = urlparse(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    sent = 0
    try:
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += 1
        conn.send(b"0\r\n\r\n")
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the rest was sent
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    return r.status, body, sent


def test_a_chunked_body_beyond_max_body_bytes_is_a_413(tiny_models):
    def endless():  # 64 KiB chunks, far beyond max_body_bytes, until the server stops reading
        for _ in range(2000):
            yield b" " * 65536

    with serve(make_app(tiny_models)) as url:
        status, body, sent = _chunked_post(url, "/v1/runs", endless())
        assert status == 413 and body["error"]["code"] == "limit_exceeded" and body["error"]["path"] == "body"
        assert str(MAX_BODY) in body["error"]["message"]
        assert sent < 2000  # refused while the body was still coming, not after reading it all
        # a chunked body within the limit is read whole and served as usual
        small = b'{"workflow": "sd-txt2img", "inputs": {"prompt": "a fox", "steps": 1}}'
        status, body, _ = _chunked_post(url, "/v1/runs", [small[:20], small[20:]])
        assert status == 200 and body["status"] in ("queued", "running", "succeeded"), body
