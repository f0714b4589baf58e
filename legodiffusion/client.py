"""A small Python client for the native v1 API."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx


class ApiError(RuntimeError):
    def __init__(self, status: int, error: dict) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status, self.error = status, error


class Client:
    """``Client("http://127.0.0.1:8000", api_key=...)``; every method raises :class:`ApiError` with
    the server's stable error object."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout_s: float = 600.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def _json(self, method: str, path: str, **kw) -> dict:
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                raise ApiError(r.status_code, r.json()["error"])
            except (ValueError, KeyError):
                raise ApiError(r.status_code, {"code": "http_error", "message": r.text}) from None
        return r.json()

    def models(self) -> list[str]:
        """The model names the server serves (pipelines, ControlNets, LoRAs); workflows name them."""
        return self._json("GET", "/v1/catalog/models")["models"]

    def workflows(self) -> list[str]:
        return self._json("GET", "/v1/workflows")["workflows"]

    def register(self, spec: dict) -> dict:
        return self._json("POST", "/v1/workflows", json={"spec": spec})

    def submit(self, workflow: str, inputs: dict[str, Any], slo_s: float | None = None) -> dict:
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
