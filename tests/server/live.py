"""A real uvicorn server on a loopback port, for tests that need real connections, and what
those tests share: waiting on the server's state, its in-flight gauge, a raw POST."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import uvicorn


@contextmanager
def serve(app) -> Iterator[str]:
    """Serve ``app`` in a thread; yields its base URL and stops it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(400):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def until(check, what: str, limit_s: float = 60.0):
    """Poll ``check`` (a probe of server state) until it returns something truthy, which is
    returned; AssertionError after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)  # a poll interval between probes, not a stand-in for an event
    raise AssertionError(f"timed out waiting for {what}")


def in_flight(metrics_text: str) -> float:
    """The requests admitted and not finished, from ``GET /metrics``'s text."""
    for line in metrics_text.splitlines():
        if line.startswith("legodiffusion_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


@contextmanager
def raw_post(url: str, path: str, body: dict) -> Iterator[socket.socket]:
    """POST ``body`` as JSON on a connection of its own, which is closed (the client gone) when
    the block ends, whether or not an answer came."""
    u = urlparse(url)
    data = json.dumps(body).encode()
    with socket.create_connection((u.hostname, u.port)) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        s.sendall(head.encode() + data)
        yield s


def load(url: str, api_key: str | None, bodies: list[dict], concurrency: int = 2) -> list[dict]:
    """POST each of ``bodies`` to ``/v1/runs`` with ``wait``, ``concurrency`` at a time; their answers, in order."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:

        def one(body: dict) -> dict:
            return client.post("/v1/runs", json=dict(body, wait=True)).json()

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, bodies))
