"""A small Python client for the native v1 API."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx


class ApiError(RuntimeError):
    def __init__(self, status: int, error: dict) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status, self.error = status, error


class Client:
    """``Client("http://127.0.0.1:8000", api_key=...)``; every method raises :class:`ApiError` with
    the server's stable error object.

    A refusal that says when to come back (429 for a full queue, 503 while the server starts or
    has no worker, each with ``Retry-After``) is retried after that many seconds: up to
    ``attempts`` tries in all, and never past ``retry_within_s`` from the first (a wait that would
    end later is not started); then the refusal is raised. A refused request has queued nothing,
    so trying it again submits it once."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 600.0,
        attempts: int = 3,
        retry_within_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)
        self.attempts, self.retry_within_s, self._sleep = attempts, retry_within_s, sleep

    def _json(self, method: str, path: str, **kw) -> dict:
        deadline = time.monotonic() + self.retry_within_s
        for attempt in range(1, self.attempts + 1):
            r = self._http.request(method, path, **kw)
            if r.status_code < 400:
                return r.json()
            after_s = _retry_after_s(r)
            if after_s is None or attempt == self.attempts or time.monotonic() + after_s > deadline:
                break
            self._sleep(after_s)
        try:
            raise ApiError(r.status_code, r.json()["error"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(r.status_code, {"code": "http_error", "message": r.text}) from None

    def models(self) -> list[str]:
        """The model names the server serves (pipelines, ControlNets, LoRAs); workflows name them."""
        return self._json("GET", "/v1/catalog/models")["models"]

    def workflows(self) -> list[str]:
        return self._json("GET", "/v1/workflows")["workflows"]

    def register(self, spec: dict) -> dict:
        return self._json("POST", "/v1/workflows", json={"spec": spec})

    def upload(self, image: Any) -> str:
        """Send an image once (a PIL image, or a ``pathlib.Path`` to a PNG, JPEG or WebP file) and
        return its id, which an image input of any run takes in its place until it expires."""
        r = self._json("POST", "/v1/uploads", files={"file": ("image", image_bytes(image))})
        return r["id"]

    def submit(self, workflow: str, inputs: dict[str, Any], slo_s: float | None = None) -> dict:
        """Submit one run. An input that is a PIL image or a ``pathlib.Path`` is sent as a base64
        image (a string stays a string: a prompt, or an upload id from :meth:`upload`)."""
        inputs = {k: _encoded(v) for k, v in inputs.items()}
        return self._json("POST", "/v1/runs", json={"workflow": workflow, "inputs": inputs, "slo_s": slo_s})

    def get(self, run_id: str) -> dict:
        return self._json("GET", f"/v1/runs/{run_id}")

    def cancel(self, run_id: str) -> dict:
        return self._json("POST", f"/v1/runs/{run_id}/cancel")

    def events(self, run_id: str) -> Iterator[tuple[str, dict]]:
        """Server-Sent Events of a run: ("progress", run) ... then (final status, run)."""
        with self._http.stream("GET", f"/v1/runs/{run_id}/events") as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    yield event, json.loads(line[6:])

    def run(
        self, workflow: str, inputs: dict[str, Any], slo_s: float | None = None, on_progress: Callable[[dict], None] | None = None
    ) -> dict:
        """Submit, follow progress over SSE, and return the final run (images decoded to PNG bytes)."""
        run = self.submit(workflow, inputs, slo_s)
        final = run
        if run["status"] not in ("succeeded", "failed", "rejected", "cancelled"):
            for event, data in self.events(run["id"]):
                if event == "progress" and on_progress is not None:
                    on_progress(data)
                final = data
        if final["status"] == "succeeded" and "images" not in final:
            time.sleep(0)
            final = self.get(run["id"])
        final["png"] = [base64.b64decode(b) for b in final.get("images", [])]
        return final


def image_bytes(image: Any) -> bytes:
    """The file bytes of a PIL image (as PNG) or of the image file at a ``pathlib.Path``."""
    if isinstance(image, Path):
        return image.read_bytes()
    if type(image).__module__.split(".")[0] == "PIL":
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"expected a PIL image or a pathlib.Path, got {type(image).__name__}")


def _encoded(value: Any) -> Any:
    if isinstance(value, Path) or type(value).__module__.split(".")[0] == "PIL":
        return base64.b64encode(image_bytes(value)).decode()
    return value


def _retry_after_s(r: httpx.Response) -> float | None:
    """Seconds to wait before trying ``r``'s request again: its ``Retry-After`` (in seconds, as
    this server sends it) on a 429 or 503; None when it should not be retried."""
    if r.status_code not in (429, 503):
        return None
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
