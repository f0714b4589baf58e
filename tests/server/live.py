"""A real uvicorn server on a loopback port, for tests that need real connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
